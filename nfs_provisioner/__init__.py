"""nfs-provisioner: an all-in-one NFS provisioner appliance for Kubernetes.

One process starts and configures NFS-Ganesha, keeps its export configuration
in templated files, and runs a provision controller that turns claims of its
StorageClass into NFS-backed PersistentVolumes. The controller is a reusable
library (``nfs_provisioner.controller``) for any out-of-tree provisioner.
"""

__version__ = "0.1.0"
