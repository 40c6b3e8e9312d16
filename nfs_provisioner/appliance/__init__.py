"""The NFS appliance: the :class:`~nfs_provisioner.appliance.provisioner.NFSProvisioner`
(directory + export + optional quota per volume), its exporters (Ganesha over
D-Bus), the server address, and the process that runs it all.

Contract: this package joins ``controller`` (the library), ``ganesha`` (the
server manager), ``quota`` and ``volumes``; it adds no Kubernetes or D-Bus
transport of its own.
"""
