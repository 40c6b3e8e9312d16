{{/* Names, labels and the checks every template relies on. */}}

{{- define "nfs-provisioner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nfs-provisioner.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects (ClusterRole, ClusterRoleBinding) also carry the namespace: two releases of
one name in two namespaces do not collide. */}}
{{- define "nfs-provisioner.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "nfs-provisioner.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nfs-provisioner.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "nfs-provisioner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "nfs-provisioner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nfs-provisioner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nfs-provisioner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nfs-provisioner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required with serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Unique per release: <release>.<namespace>.nfs-provisioner.local/nfs (a qualified name: DNS-subdomain
prefix, '/', a name). */}}
{{- define "nfs-provisioner.provisionerName" -}}
{{- $generated := printf "%s.%s.nfs-provisioner.local/nfs" .Release.Name .Release.Namespace }}
{{- default (default $generated .Values.storageClass.provisionerName) .Values.provisionerName }}
{{- end }}

{{/* The pods of the StatefulSet: replicas, or the Go chart's name for it, replicaCount, when given
(docs/migration.md). */}}
{{- define "nfs-provisioner.replicas" -}}
{{- if kindIs "invalid" .Values.replicaCount }}{{ .Values.replicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{- define "nfs-provisioner.storageClassName" -}}
{{- default (include "nfs-provisioner.fullname" .) .Values.storageClass.name }}
{{- end }}

{{/* The PVs name the Service's ClusterIP: a StatefulSet of one pod, not in a pool. */}}
{{- define "nfs-provisioner.serviceMode" -}}
{{- if and (eq .Values.kind "StatefulSet") (eq (int (include "nfs-provisioner.replicas" .)) 1) (not .Values.pool) }}true{{ end }}
{{- end }}

{{/* A pool of StatefulSet pods: a Service per pod, named as the pod (<fullname>-<ordinal>); each member's PVs
name its own Service's ClusterIP (SERVICE_NAME=$(POD_NAME)), which outlives the pod's restarts and the
StatefulSet's scaling. */}}
{{- define "nfs-provisioner.poolServices" -}}
{{- if and (eq .Values.kind "StatefulSet") .Values.pool }}true{{ end }}
{{- end }}

{{- define "nfs-provisioner.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Combinations the schema cannot say; each fails the install with one line. */}}
{{- define "nfs-provisioner.validate" -}}
{{- if and (gt (int (include "nfs-provisioner.replicas" .)) 1) (not .Values.leaderElect) (not .Values.pool) }}
{{- fail "replicas > 1 needs leaderElect: true (only the lease holder may provision) or a pool (each pod a member)" }}
{{- end }}
{{- if and .Values.pool .Values.leaderElect }}
{{- fail "pool and leaderElect exclude each other: a pool member works on its own claims and volumes" }}
{{- end }}
{{- if and (eq .Values.kind "DaemonSet") .Values.persistence.enabled }}
{{- fail "kind DaemonSet needs persistence.enabled: false (a DaemonSet has no claim per pod); set hostPath.path for the export root" }}
{{- end }}
{{- if and (eq .Values.kind "DaemonSet") (ne (int (include "nfs-provisioner.replicas" .)) 1) }}
{{- fail "replicas is for kind StatefulSet; a DaemonSet runs one pod per selected node" }}
{{- end }}
{{- if and .Values.persistence.existingClaim (gt (int (include "nfs-provisioner.replicas" .)) 1) }}
{{- fail "persistence.existingClaim is one claim: it serves one pod (replicas: 1)" }}
{{- end }}
{{- end }}

{{/* The NFS ports: name, port, and whether NFSv3 alone needs them. The same as deploy/kube-config's. */}}
{{- define "nfs-provisioner.nfsPorts" -}}
{{- $ports := list (list "nfs" 2049 false) (list "mountd" 20048 true) (list "nlockmgr" 32803 true) (list "rquotad" 875 false) (list "rpcbind" 111 true) (list "statd" 662 true) }}
{{- range $ports }}
{{- if or $.Values.nfsv3 (not (index . 2)) }}
- {{ index . 0 }}: {{ index . 1 }}
{{- end }}
{{- end }}
{{- end }}

{{/* --nfsv3-locking: the value when set. Unset (null): a new install serves NFSv3 without NLM (a restart's grace
ends once every NFSv4.1+ client has reclaimed); an upgrade keeps what the release's workload runs with, and a
workload without the argument (made by a chart before this value) or that cannot be read (--dry-run, helm
template --is-upgrade) keeps NLM, as it had. docs/appliance.md, "Availability". */}}
{{- define "nfs-provisioner.nfsv3Locking" -}}
{{- if kindIs "bool" .Values.nfsv3Locking -}}
{{ .Values.nfsv3Locking }}
{{- else if .Release.IsUpgrade -}}
{{- $locking := "true" -}}
{{- $old := lookup "apps/v1" .Values.kind .Release.Namespace (include "nfs-provisioner.fullname" .) -}}
{{- if $old -}}
{{- range $c := $old.spec.template.spec.containers -}}
{{- if eq $c.name "nfs-provisioner" -}}
{{- range $a := $c.args -}}
{{- if hasPrefix "--nfsv3-locking=" $a -}}
{{- $locking = trimPrefix "--nfsv3-locking=" $a -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $locking -}}
{{- else -}}
false
{{- end -}}
{{- end }}

{{/* The container's securityContext: the value, privileged with isolation: filesystem (the appliance attaches loop
devices and mounts filesystems; CAP_SYS_ADMIN alone is not enough, the runtime's device cgroup gives no loop device
to a container that is not privileged). docs/filesystem-volumes.md, "Where users run it". */}}
{{- define "nfs-provisioner.securityContext" -}}
{{- $sc := deepCopy (.Values.securityContext | default dict) -}}
{{- if eq .Values.isolation "filesystem" -}}
{{- $_ := set $sc "privileged" true -}}
{{- $_ := set $sc "allowPrivilegeEscalation" true -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end }}
