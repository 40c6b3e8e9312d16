"""Run NFS-Ganesha: private D-Bus daemon, rpcbind/statd for NFSv3, ganesha.nfsd; supervise; stop.

Start sequence (``GaneshaServer.start``):

0. which Ganesha (installed, or an unpacked tree: ``binary``) and its version; older than
   ``binary.MIN_VERSION`` is refused with one line;
1. directories under the export root (config, recovery) and the run directory;
2. a private ``dbus-daemon`` (own config and socket) unless ``dbus_address`` is given;
   wait until it answers ``ListNames`` (Ganesha never reconnects to a late bus);
3. with NFSv3: ``rpcbind -f -w`` unless one already answers, then (with NLM) ``rpc.statd`` on port 662
   (outgoing 2020), started again while its random reserved socket sits on a port Ganesha needs;
4. the export index rebuilt from the export files;
5. ganesha.conf rendered for this start (graceless when there is no client state to reclaim), then
   ``ganesha.nfsd -F`` with a bounded RLIMIT_NOFILE, logging to its stderr; ready when its
   name is on the bus, ShowExports answers and its log says the server is initialized;
6. the export files are cross-checked against ShowExports; a supervisor thread restarts
   Ganesha with backoff whenever it exits (exports come back from the files).

``stop()`` asks Ganesha to shut down over D-Bus, then signals it, then stops the
helpers, each with a bounded wait, all by PID.

Every child's stdout and stderr is read by this process into a size-capped file
(``processes.ChildLog``): Ganesha's ``ganesha.log`` in the config directory, the
helpers' in the run directory; none grows without bound, whatever clients do.

Modules, each importing only those listed after it: ``running`` (:class:`GaneshaServer`: builds the parts, start
and stop), ``health`` (ready and probe), ``supervising`` (restarts), ``nfsd`` (ganesha.nfsd: its config and grace
decision, start, stop), ``helpers`` (dbus-daemon, rpcbind, rpc.statd), ``waiting`` (bounded, cancellable waits).
This ``__init__`` is the public face: import the names below from here.
"""

from nfs_provisioner.ganesha.server.helpers import HELPER_NOFILE, STATD_ATTEMPTS, STATD_PROGRAM, STATD_REGISTER_TIMEOUT
from nfs_provisioner.ganesha.server.nfsd import BIND_WINDOW, NODE_DIR, READY_MARK
from nfs_provisioner.ganesha.server.running import PID_FILE, GaneshaServer
from nfs_provisioner.ganesha.server.supervising import STABLE_AFTER

__all__ = [
    "BIND_WINDOW",
    "HELPER_NOFILE",
    "NODE_DIR",
    "PID_FILE",
    "READY_MARK",
    "STABLE_AFTER",
    "STATD_ATTEMPTS",
    "STATD_PROGRAM",
    "STATD_REGISTER_TIMEOUT",
    "GaneshaServer",
]
