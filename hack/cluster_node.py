"""A kubelet node for hack/cluster's control plane (`hack/cluster up --node`).

Contract: everything the node does happens inside one network namespace made here
(`ip netns add nfsp-<hash>`): the node address (10.200.0.1 on a veth pair whose both
ends stay inside), the pods' CNI bridge, kube-proxy's iptables rules, the kubelet's and
containerd's sockets. Nothing is added to the host's network or firewall. The API
server (on the host's 127.0.0.1) is reached through a relay whose listening sockets
were opened inside the namespace: 0.0.0.0:<apiserver port> (the node's kubeconfigs
say https://127.0.0.1:<port>; the `kubernetes` EndpointSlice written here says
10.200.0.1:<port>) and 10.0.0.1:443 (the `kubernetes` Service IP, on the namespace's
lo). Pods' cgroups live under /sys/fs/cgroup/*/<netns name>/ (kubelet cgroupRoot), so
nodes of several clusters can run side by side. Teardown is by recorded PID; host
sysctls the kubelet rewrites are recorded by the first node up and restored by the
last one down, which also removes the host paths kubelet, containerd and libcni
create only if none existed before the first.

Used by hack/cluster only (it passes itself as `cl`); host state and teardown helpers are in
node_host.py, the pause image in node_image.py. Standard library only.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import node_host
import node_image

NODE_NAME = "nfsp-node"
NODE_CIDR = "10.200.0.0/24"
NODE_IP = "10.200.0.1"
POD_CIDR = "10.244.0.0/24"
NODE_PROCS = ("nfsp-relay", "containerd", "kubelet", "kube-proxy")  # started in this order


def containerd_dir(cache: Path) -> Path:
    return cache / "containerd" / "current" / "root" / "usr" / "bin"


class Node:
    """Paths and names of the node of one cluster state dir."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.root = state.root / "node"
        self.netns_name = node_host.netns_name_of(state.root)
        self.netns = Path("/run/netns") / self.netns_name
        self.kubelet_root = self.root / "kubelet"
        self.ctd = self.root / "containerd"
        self.sock = self.ctd / "containerd.sock"
        self.record = self.root / "record.json"  # copy of the host's state before the first node (host.json)

    def info(self, *, pause_image: str, pause_tar: Path, ctr: Path) -> dict[str, Any]:
        """What tests/support/kubenode.py reads (STATE/node/node.json)."""
        return {"name": NODE_NAME, "netns": str(self.netns), "ip": NODE_IP, "pod_cidr": POD_CIDR,
                "containerd_socket": str(self.sock), "ctr": str(ctr), "pause_image": pause_image,
                "pause_tar": str(pause_tar),
                "kubeconfig": str(self.state.kubeconfig)}


# --------------------------------------------------------------------------- network

def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def make_netns(node: Node) -> None:
    if node.netns.exists():
        return
    _ip("netns", "add", node.netns_name)
    n = node.netns_name
    # Both ends created inside the namespace (`ip -n`): the node address never exists on the host.
    _ip("-n", n, "link", "set", "lo", "up")
    _ip("-n", n, "addr", "add", "10.0.0.1/32", "dev", "lo")
    _ip("-n", n, "link", "add", "nfsp0", "type", "veth", "peer", "name", "nfsp1")
    _ip("-n", n, "addr", "add", f"{NODE_IP}/24", "dev", "nfsp0")
    _ip("-n", n, "link", "set", "nfsp0", "up")
    _ip("-n", n, "link", "set", "nfsp1", "up")
    # Locally sent packets to a ClusterIP need a route before kube-proxy's OUTPUT DNAT sees them.
    _ip("-n", n, "route", "add", "10.0.0.0/24", "dev", "nfsp0", "src", NODE_IP)


def write_cni(node: Node) -> Path:
    conf = node.root / "cni" / "net.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "10-nfsp.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "nfsp", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(node.root / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=2))
    return conf


# --------------------------------------------------------------------------- relay

def relay_main(netns: str, api_port: int) -> None:
    """`hack/cluster relay NETNS PORT`: listen inside NETNS, forward to the host's 127.0.0.1:PORT."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, b"nfsp-relay", 0, 0, 0)  # PR_SET_NAME: /proc/PID/comm, checked by running_pid
    listeners = []

    def setns(fd: int) -> None:  # os.setns is Python >= 3.12
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns: {os.strerror(ctypes.get_errno())}")

    with open("/proc/self/ns/net") as host, open(netns) as ns:
        setns(ns.fileno())
        try:
            for addr in (("0.0.0.0", api_port), ("10.0.0.1", 443)):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(addr)
                s.listen(128)
                listeners.append(s)
        finally:
            setns(host.fileno())  # sockets keep the namespace they were made in

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)

    def serve(lst: socket.socket) -> None:
        while True:
            conn, _ = lst.accept()
            try:
                up = socket.create_connection(("127.0.0.1", api_port), timeout=5)
                up.settimeout(None)
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    for lst in listeners:
        threading.Thread(target=serve, args=(lst,), daemon=True).start()
    print(f"relay: {netns} 0.0.0.0:{api_port} and 10.0.0.1:443 -> host 127.0.0.1:{api_port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


# --------------------------------------------------------------------------- API

def _api(cl: ModuleType, state: Any, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    port = state.ports()["apiserver"]
    ctx = ssl.create_default_context(cafile=str(state.pki / "ca.crt"))
    ctx.load_cert_chain(str(state.pki / "admin.crt"), str(state.pki / "admin.key"))
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _apply(cl: ModuleType, state: Any, collection: str, name: str, body: dict[str, Any]) -> None:
    code = _api(cl, state, "POST", collection, body)
    if code == 409:
        code = _api(cl, state, "PUT", f"{collection}/{name}", body)
    if code >= 300:
        raise cl.ClusterError(f"could not write {collection}/{name} (HTTP {code})")


def api_objects(cl: ModuleType, state: Any) -> None:
    """RBAC for the node (the apiserver runs RBAC only, without the Node authorizer) and the
    `kubernetes` Service's endpoint (the apiserver's own reconciler is off; it would write 127.0.0.1)."""
    _apply(cl, state, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", "nfsp:nodes", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "nfsp:nodes"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]})
    _apply(cl, state, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", "kubernetes", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "hack-cluster"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": state.ports()["apiserver"], "protocol": "TCP"}]})


# --------------------------------------------------------------------------- configs

def write_configs(cl: ModuleType, state: Any, node: Node, pause_ref: str) -> None:
    pki, root = state.pki, node.root
    api = f"https://127.0.0.1:{state.ports()['apiserver']}"
    for user, subject in (("scheduler", "/CN=system:kube-scheduler"),
                          ("node", f"/O=system:nodes/CN=system:node:{NODE_NAME}"),
                          ("kube-proxy", "/CN=system:kube-proxy")):
        if not (pki / f"{user}.crt").exists():
            cl._cert(pki, user, subject, server=False)
        cl.write_kubeconfig(root / f"{user}.kubeconfig", server=api, pki=pki, user=user)
    cni = write_cni(node)
    (node.ctd).mkdir(parents=True, exist_ok=True)
    (node.ctd / "config.toml").write_text(f"""\
version = 3
root = "{node.ctd / 'root'}"
state = "{node.ctd / 'state'}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{node.sock}"

[ttrpc]
  address = "{node.ctd / 'containerd.sock.ttrpc'}"

[plugins.'io.containerd.internal.v1.opt']
  path = "{node.ctd / 'opt'}"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{pause_ref}"

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"
  Root = "{node.ctd / 'runc'}"

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "{cni}"
  max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
""")
    (root / "kubelet.yaml").write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # cgroup v1 and no systemd on this kind of host; 1.35 refuses cgroup v1 by default
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
        # pods under /<netns name>/kubepods: nodes of other clusters on this host have their own
        "cgroupRoot": f"/{node.netns_name}",
        "makeIPTablesUtilChains": False, "readOnlyPort": 0,
        "address": NODE_IP, "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "authentication": {"x509": {"clientCAFile": str(pki / "ca.crt")},
                           "webhook": {"enabled": False}, "anonymous": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{node.sock}",
        "podLogsDir": str(root / "pod-logs"),
        "podCIDR": POD_CIDR, "clusterDomain": "cluster.local",
        "oomScoreAdj": 0,
        # a test machine's disk may be fuller than the defaults allow; never evict here
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "2s", "syncFrequency": "10s",
    }, indent=2))
    (root / "kube-proxy.yaml").write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables", "hostnameOverride": NODE_NAME, "bindAddress": NODE_IP,
        "clientConnection": {"kubeconfig": str(root / "kube-proxy.kubeconfig")},
        "clusterCIDR": POD_CIDR, "detectLocalMode": "ClusterCIDR", "nodePortAddresses": ["primary"],
        "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
        # 0 = leave alone: these are host-global (/sys/module/nf_conntrack, nf_conntrack_max)
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
        # masqueradeAll: pod -> Service -> pod on the same bridge works without br_netfilter
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "syncPeriod": "30s",
                     "minSyncPeriod": "0s"},
        "oomScoreAdj": 0,
    }, indent=2))


# --------------------------------------------------------------------------- start

def _in_ns(node: Node, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={node.netns}", "--", *argv]


def _ns_ok(node: Node, argv: list[str]) -> bool:
    return subprocess.run(_in_ns(node, argv), capture_output=True, timeout=10).returncode == 0


def _kubectl_json(state: Any, *args: str) -> Any:
    r = subprocess.run(["kubectl", f"--kubeconfig={state.kubeconfig}", *args, "-o", "json"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout)


def _node_ready(state: Any) -> bool:
    n = _kubectl_json(state, "get", "node", NODE_NAME)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))


def import_image(node: Node, cl: ModuleType, tar: Path) -> None:
    ctr = containerd_dir(cl.CACHE) / "ctr"
    with tar.open("rb") as f:
        r = subprocess.run([str(ctr), "--address", str(node.sock), "-n", "k8s.io", "images", "import", "-"],
                           stdin=f, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise cl.ClusterError(f"ctr images import {tar} failed: {r.stderr.strip()}")


def start_scheduler(cl: ModuleType, state: Any) -> None:
    name = "kube-scheduler"
    if state.running_pid(name):
        return
    ports = state.ports()
    if "scheduler" not in ports:
        ports["scheduler"] = cl.free_port()
        state.ports_file.write_text(json.dumps(ports))
    kcfg = state.root / "node" / "scheduler.kubeconfig"
    proc = cl._spawn(state, name, [
        str(cl.kube_bin_dir() / name), f"--kubeconfig={kcfg}", f"--authentication-kubeconfig={kcfg}",
        f"--authorization-kubeconfig={kcfg}", "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
        "--leader-elect=false", "--v=1"])
    url = f"https://127.0.0.1:{ports['scheduler']}/healthz"
    cl._wait(state, name, proc, lambda: cl._https_ok(url, state, client_cert=False), 60)


def up(cl: ModuleType, state: Any) -> None:
    """Scheduler + node on a running control plane."""
    started = time.monotonic()
    node = Node(state)
    ctd_bin = containerd_dir(cl.CACHE)
    if not (ctd_bin / "containerd").exists():
        raise cl.ClusterError(f"containerd 2.x is not in {ctd_bin} (hack/install-deps fetches it)")
    for tool in ("nsenter", "ip", "iptables", "runc"):
        if not shutil.which(tool):
            raise cl.ClusterError(f"{tool} is not installed (hack/install-deps installs it)")
    if not Path("/usr/lib/cni/bridge").exists():
        raise cl.ClusterError("no CNI plugins in /usr/lib/cni (Debian containernetworking-plugins)")
    if len(str(node.sock)) > 100:
        raise cl.ClusterError(f"containerd's socket path {node.sock} is too long for a unix socket")
    already = all(state.running_pid(n) for n in ("kube-scheduler", *NODE_PROCS))
    cl.build(node=True)
    pause_ref, pause_tar = node_image.pause_image(cl)
    node.root.mkdir(parents=True, exist_ok=True)
    with node_host.registry():  # the namespace first: it is what tells other nodes that this one is up
        try:
            make_netns(node)
        except RuntimeError as e:
            subprocess.run(["ip", "netns", "del", node.netns_name], capture_output=True)
            raise cl.ClusterError(f"node: {e}") from e
        node_host.register(node)
    try:
        write_configs(cl, state, node, pause_ref)
        api_objects(cl, state)
        start_scheduler(cl, state)
        port = state.ports()["apiserver"]
        if not state.running_pid("nfsp-relay"):
            proc = cl._spawn(state, "nfsp-relay", [sys.executable, str(Path(cl.__file__).resolve()), "relay",
                                                   "--netns", str(node.netns), "--port", str(port),
                                                   "--state-dir", str(state.root)])
            cl._wait(state, "nfsp-relay", proc,
                     lambda: "relay:" in state.logfile("nfsp-relay").read_text(), 10)
        if not state.running_pid("containerd"):
            proc = cl._spawn(state, "containerd", _in_ns(node, [
                str(ctd_bin / "containerd"), "--config", str(node.ctd / "config.toml")]))
            cl._wait(state, "containerd", proc, lambda: node.sock.exists() and _ns_ok(
                node, [str(ctd_bin / "ctr"), "--address", str(node.sock), "version"]), 30)
        import_image(node, cl, pause_tar)  # (again if containerd ran: the pause source may be newer)
        if not state.running_pid("kubelet"):
            node_host.make_cgroups(node)
            proc = cl._spawn(state, "kubelet", _in_ns(node, [
                str(cl.kube_bin_dir() / "kubelet"), f"--config={node.root / 'kubelet.yaml'}",
                f"--kubeconfig={node.root / 'node.kubeconfig'}", f"--root-dir={node.kubelet_root}",
                f"--cert-dir={node.root / 'kubelet-pki'}", f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}", "--v=1"]))
            cl._wait(state, "kubelet", proc, lambda: _node_ready(state), 120)
        # What kube-controller-manager's node IPAM (--allocate-node-cidrs) would write, for this node only:
        # the pod CIDR its CNI bridge uses. The appliance lets each Node's pod-CIDR gateway mount
        # (that is the source address of the node's own mounts through the bridge).
        if not _kubectl_json(state, "get", "node", NODE_NAME)["spec"].get("podCIDR"):
            r = subprocess.run(["kubectl", f"--kubeconfig={state.kubeconfig}", "patch", "node", NODE_NAME, "-p",
                                json.dumps({"spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]}})],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise cl.ClusterError(f"cannot set node {NODE_NAME}'s podCIDR: {r.stderr.strip()}")
        if not state.running_pid("kube-proxy"):
            proc = cl._spawn(state, "kube-proxy", _in_ns(node, [
                str(cl.kube_bin_dir() / "kube-proxy"), f"--config={node.root / 'kube-proxy.yaml'}", "--v=1"]))
            cl._wait(state, "kube-proxy", proc, lambda: _ns_ok(
                node, ["python3", "-c", "import urllib.request as u; "
                       "u.urlopen('http://127.0.0.1:10256/healthz', timeout=2)"]), 60)
    except (cl.ClusterError, RuntimeError, OSError) as e:
        down(cl, state, quiet=True)
        if isinstance(e, cl.ClusterError):
            raise
        raise cl.ClusterError(f"node: {e}") from e
    (node.root / "node.json").write_text(json.dumps(node.info(pause_image=pause_ref, pause_tar=pause_tar,
                                                              ctr=ctd_bin / "ctr"),
                                                    indent=2))
    verb = "up (already)" if already else "Ready"
    cl.log(f"node {NODE_NAME} {verb} in {time.monotonic() - started:.1f}s (netns {node.netns}, "
           f"node IP {NODE_IP}, pods {POD_CIDR}, containerd {node.sock})")


# --------------------------------------------------------------------------- down

def down(cl: ModuleType, state: Any, *, quiet: bool = False) -> None:
    node = Node(state)
    if not node.root.exists():
        return
    if state.running_pid("kube-apiserver") and state.running_pid("kubelet"):
        with contextlib.suppress(Exception):
            _api(cl, state, "DELETE", f"/api/v1/nodes/{NODE_NAME}")
    for name in ("kube-proxy", "kubelet"):
        pid = state.running_pid(name)
        cl.stop_pid(state, name)
        if pid and not quiet:
            cl.log(f"stopped {name} (pid {pid})")
    pods = node_host.pids_in_cgroups(node)
    node_host.kill_all(pods)
    node_host.kill_all(node_host.shim_pids(node, containerd_dir(cl.CACHE) / "containerd-shim-runc-v2"))
    for name in ("containerd", "nfsp-relay", "kube-scheduler"):
        pid = state.running_pid(name)
        cl.stop_pid(state, name)
        if pid and not quiet:
            cl.log(f"stopped {name} (pid {pid})")
    node_host.unmount_under([node.kubelet_root, node.ctd, node.root])
    node_host.rm_cgroups(node)
    with node_host.registry():
        if node.netns.exists():
            subprocess.run(["ip", "netns", "del", node.netns_name], capture_output=True)
        node_host.unregister(node, cl.log, quiet=quiet)
    node.record.unlink(missing_ok=True)
    (node.root / "node.json").unlink(missing_ok=True)
    if pods and not quiet:
        cl.log(f"killed {len(pods)} pod process(es)")


def status(state: Any) -> bool:
    node = Node(state)
    ok = True
    for name in ("kube-scheduler", *NODE_PROCS):
        pid = state.running_pid(name)
        ok &= pid is not None
        print(f"{name:26} {'pid ' + str(pid) if pid else 'not running'}")
    print(f"node                       {NODE_NAME} {NODE_IP} netns {node.netns} "
          f"({'present' if node.netns.exists() else 'absent'})")
    return ok
