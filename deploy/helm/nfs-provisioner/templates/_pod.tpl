{{/* The pod template of the StatefulSet and the DaemonSet. */}}
{{- define "nfs-provisioner.podTemplate" -}}
{{- $daemon := eq .Values.kind "DaemonSet" -}}
metadata:
  labels:
    {{- include "nfs-provisioner.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.metrics.port | quote }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "nfs-provisioner.serviceAccountName" . }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: nfs-provisioner
      image: {{ include "nfs-provisioner.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - --provisioner={{ include "nfs-provisioner.provisionerName" . }}
        - --grace-period={{ .Values.gracePeriod }}
        - --enable-xfs-quota={{ .Values.enableXfsQuota }}
        - --export-subnet={{ .Values.exportSubnet }}
        - --max-exports={{ .Values.maxExports }}
        - --nfsv3={{ .Values.nfsv3 }}
        - --nfsv3-locking={{ include "nfs-provisioner.nfsv3Locking" . }}
        - --device-based-fsids={{ .Values.deviceBasedFsids }}
        - --threadiness={{ .Values.threadiness }}
        - --kube-api-qps={{ .Values.kubeApiQps }}
        - --kube-api-burst={{ .Values.kubeApiBurst }}
        - --leader-elect={{ .Values.leaderElect }}
        {{- with .Values.pool }}
        - --pool={{ . }}
        {{- end }}
        {{- if or .Values.leaderElect .Values.pool }}
        - --leader-elect-lease-duration={{ .Values.leaderElectLeaseDuration }}
        - --leader-elect-renew-deadline={{ .Values.leaderElectRenewDeadline }}
        - --leader-elect-retry-period={{ .Values.leaderElectRetryPeriod }}
        {{- end }}
        - --metrics-address=:{{ .Values.metrics.port }}
        - --log-level={{ .Values.logLevel }}
        - --log-json={{ .Values.logJson }}
        {{- if kindIs "map" .Values.extraArgs }}
        {{- /* The Go chart's form: {flag: value} -> -flag=value (Go-style flags are accepted). */}}
        {{- range $flag, $value := .Values.extraArgs }}
        - {{ printf "-%s=%v" $flag $value | quote }}
        {{- end }}
        {{- else }}
        {{- with .Values.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- end }}
      ports:
        {{- range (include "nfs-provisioner.nfsPorts" . | fromYamlArray) }}
        {{- range $name, $port := . }}
        {{- range $proto := list "TCP" "UDP" }}
        - name: {{ $name }}{{ if eq $proto "UDP" }}-udp{{ end }}
          containerPort: {{ $port }}
          protocol: {{ $proto }}
          {{- if $daemon }}
          hostPort: {{ $port }}
          {{- end }}
        {{- end }}
        {{- end }}
        {{- end }}
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
      env:
        {{- if $daemon }}
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        {{- end }}
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        {{- if include "nfs-provisioner.serviceMode" . }}
        - name: SERVICE_NAME
          value: {{ include "nfs-provisioner.fullname" . }}
        {{- end }}
        {{- if include "nfs-provisioner.poolServices" . }}
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        # The pod's own Service (service.yaml): the kubelet expands $(POD_NAME) from the entry above.
        - name: SERVICE_NAME
          value: $(POD_NAME)
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with (include "nfs-provisioner.securityContext" . | fromYaml) }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: 5
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        initialDelaySeconds: 30
        periodSeconds: 20
        failureThreshold: 3
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: export-volume
          mountPath: /export
  {{- if not (and (eq .Values.kind "StatefulSet") .Values.persistence.enabled (not .Values.persistence.existingClaim)) }}
  volumes:
    - name: export-volume
      {{- if and .Values.persistence.enabled .Values.persistence.existingClaim }}
      persistentVolumeClaim:
        claimName: {{ .Values.persistence.existingClaim }}
      {{- else if .Values.hostPath.path }}
      hostPath:
        path: {{ .Values.hostPath.path }}
        type: {{ .Values.hostPath.type }}
      {{- else if .Values.emptyDir.sizeLimit }}
      emptyDir:
        sizeLimit: {{ .Values.emptyDir.sizeLimit }}
      {{- else }}
      emptyDir: {}
      {{- end }}
  {{- end }}
{{- end }}
