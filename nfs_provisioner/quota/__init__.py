"""XFS project quotas: one project per volume directory under the export root.

Contract: :func:`mountinfo.check_export_root` refuses an export root that is not
on XFS mounted with ``prjquota``/``pquota`` or a machine without ``xfs_quota``
(typed :class:`errors.QuotaUnavailableError` with a message a user can act on).
:class:`manager.ProjectQuotas` gives each volume directory the lowest free
project id >= 1 (ids still charged in the kernel are never reused), sets its hard
block limit, and records ``<id>:<directory>:<bytes>`` in ``<export root>/projects``
(rewritten atomically; the file is the source of truth and is re-applied on
start). Every multi-step change rolls back on failure, removal is idempotent,
and all methods are safe to call from several threads. External commands run
through an injectable :class:`commands.Runner`; :mod:`metrics` computes per-volume
usage and limit at scrape time. Nothing here knows about Kubernetes or Ganesha.
"""
