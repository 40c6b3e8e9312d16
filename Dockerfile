# The nfs-provisioner appliance image: NFS-Ganesha 9.x (Debian trixie-backports) + the Python provisioner.
# Build: podman build -t nfs-provisioner:0.1.0 .   (see README "Deploying"; hack/base-image makes
# the base image locally under the FROM name below)
FROM docker.io/library/debian:trixie-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# pip honours these when given (--build-arg): a private index, or a CA bundle for
# a TLS-intercepting proxy (mount it with --volume and point PIP_CERT at it).
ARG PIP_INDEX_URL
ARG PIP_CERT
COPY setup.cfg pyproject.toml README.md /src/
COPY ganesha /src/ganesha
COPY nfs_provisioner /src/nfs_provisioner
RUN python3 -m venv /opt/nfs-provisioner \
 && /opt/nfs-provisioner/bin/pip install --no-cache-dir --disable-pip-version-check /src \
 && /opt/nfs-provisioner/bin/pip uninstall -y pip setuptools >/dev/null \
 && find /opt/nfs-provisioner -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/nfs-provisioner/bin/python -m compileall -q --invalidation-mode unchecked-hash -x '/site-packages/kubernetes/' \
      /opt/nfs-provisioner/lib

FROM docker.io/library/debian:trixie-slim
# netbase: /etc/services, without which rpcbind cannot start. /etc/mtab: Ganesha's AddExport
# reads it; podman provides one, a kubelet does not. Ganesha from trixie-backports (9.x): trixie's
# 6.5 breaks NFSv4.1+ directory access for Linux >= 6.19 clients (nfs-ganesha #1385). The
# backports line uses the mirror the image's own sources name.
RUN set -e; \
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true); \
    [ -n "$uri" ] || uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list); \
    echo "deb $uri trixie-backports main" > /etc/apt/sources.list.d/backports.list; \
    apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 dbus rpcbind nfs-common xfsprogs e2fsprogs mount netbase \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t trixie-backports \
      nfs-ganesha nfs-ganesha-vfs \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && ln -sfn /proc/self/mounts /etc/mtab
# The bytecode is compiled above (never checked against the sources: they never change in the image; the `kubernetes`
# library, imported only for kubeconfigs the appliance cannot read itself, is left out), so a start imports
# instead of compiling every module (0.15 s of CPU at each start); PYTHONDONTWRITEBYTECODE keeps the rootfs unwritten.
COPY --from=build /opt/nfs-provisioner /opt/nfs-provisioner
ENV PATH=/opt/nfs-provisioner/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1
# nfs, mountd, nlockmgr, rquotad, rpcbind, statd; metrics/health
EXPOSE 2049/tcp 2049/udp 20048/tcp 20048/udp 32803/tcp 32803/udp 875/tcp 875/udp \
       111/tcp 111/udp 662/tcp 662/udp 9090/tcp
VOLUME /export
ENTRYPOINT ["nfs-provisioner"]
