"""NFS-Ganesha manager: owns one ``ganesha.nfsd`` from start to stop.

Contract: ``settings`` holds every knob (a dataclass tree, no I/O);
``config`` renders and validates the jinja2 templates and writes files
atomically; ``dbus`` is the only module that speaks D-Bus (one typed method per
Ganesha method); ``exports`` (a package) adds and removes one export per volume
(file, index line, live AddExport/RemoveExport, rolled back on failure);
``server`` (a package) starts the private D-Bus daemon, rpcbind/statd when NFSv3
is on, and Ganesha, supervises and stops them; ``metrics`` exposes Prometheus
metrics. Nothing in this package writes outside the configured export root
except the runtime directory (sockets, pid files) it is given.
"""
