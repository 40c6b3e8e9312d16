"""Volume assets on the export root: class parameters, the instance identity,
and one directory per PersistentVolume.

Contract: everything here works on local paths and plain values, never on the
Kubernetes API or Ganesha. A directory is only ever derived from a validated PV
name, directly under the export root; nothing outside that one directory is
created, renamed or deleted.
"""
