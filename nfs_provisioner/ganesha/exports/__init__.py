"""Exports: one EXPORT file per volume, an index of ``%include`` lines, live AddExport/RemoveExport.

Layout under ``config_dir``::

    exports.conf            the index, included by ganesha.conf: one %include per shard (generated)
    exports.idx/NNN.conf    shard NNN = Export_Id % 256: one %include per export (generated)
    exports.d/<name>.conf   one export: a JSON header comment + the rendered EXPORT block

Modules, each importing only those listed after it: ``manager`` (:class:`ExportManager`: add, update, remove,
load, reconcile, serve again), ``clientlists`` (one client list for every export, in one batch), ``index`` (the
sharded index), ``held`` (which exports may be given to Ganesha), ``files`` (the export files), ``registry``
(the bookkeeping and the package's only locks, with their order), ``undo`` (the undo list and the error map),
``model`` (plain data). This ``__init__`` is the public face: import the names below from here.
"""

from nfs_provisioner.ganesha.exports.files import EXPORTS_DIR, MAX_FILE_BYTES, read_export_file, temp_files
from nfs_provisioner.ganesha.exports.index import INDEX_NAME, INDEX_SHARDS, SHARDS_DIR
from nfs_provisioner.ganesha.exports.manager import ExportManager
from nfs_provisioner.ganesha.exports.model import HEADER, ClientsResult, Export, ExportRequest, ReconcileResult

__all__ = [
    "EXPORTS_DIR",
    "HEADER",
    "INDEX_NAME",
    "INDEX_SHARDS",
    "MAX_FILE_BYTES",
    "SHARDS_DIR",
    "ClientsResult",
    "Export",
    "ExportManager",
    "ExportRequest",
    "ReconcileResult",
    "read_export_file",
    "temp_files",
]
