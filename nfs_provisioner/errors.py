"""The one root of the package's own errors, and retryable versus permanent as types (kopf's habit).

::

    NFSProvisionerError                    anything the package raises on purpose; str(e) is one line for a user
    ├── Retryable                          trying again unchanged can succeed (the other side was busy or down)
    ├── Permanent                          trying again unchanged fails the same way: something must change first
    │
    ├── kube.errors.KubeError              talking to the API server
    │   ├── TransportError                 (Retryable) no HTTP answer
    │   └── ApiError                       a failure Status; TooManyRequests, ServerError (Retryable)
    ├── ganesha.errors.GaneshaError        the Ganesha manager; DBusRetryable (Retryable)
    ├── quota.errors.QuotaError            XFS project quotas
    ├── volumes: RecordError, DirectoryError, FilesystemError, CopyError, IdentityError; InvalidParameter,
    │            InvalidQuantity (Permanent, also ValueError)
    ├── fileio.Refused                     (Permanent, also ValueError) a file the appliance will not touch
    ├── settings.SettingsError             (Permanent, also ValueError) flags that do not fit together
    ├── controller.interface.DeleteError   a provisioner's ``delete`` did not finish (also RuntimeError)
    │   └── DeleteRefused                  (Permanent) not provably this appliance's volume: nothing touched
    └── appliance: StartupError (Permanent), AddressError, StateError, NodesError, KernelExportError,
                   golayout.ConfigError (Permanent, also ValueError)

Each package keeps its own module of errors with its own tree (``kube.errors``, ``ganesha.errors``,
``quota.errors``); their roots derive from :class:`NFSProvisionerError`, and a leaf whose retry is known derives
from :class:`Retryable` or :class:`Permanent` as well. Classes that also were a ``RuntimeError``, ``ValueError``
or ``KeyError`` still are. Outside this tree: what is not an error (``appliance.lifecycle.Terminated``: a stop signal;
``controller.queueing.ShutDown``; ``controller.interface.IgnoredError``), the controller's ``ProvisioningError``
(a library user's provisioner raises it), and the ``OSError``s of the volumes (``LoopError``, ``TreeChanged``,
``ganesha.portmap.PortmapError``). The appliance recognises a start-up failure by the root
(``appliance.app.STARTUP_ERRORS``).

The bottom layer of the package: imports nothing.
"""

from __future__ import annotations


class NFSProvisionerError(Exception):
    """Root of every error the package raises on purpose; the message is one line for a user."""


class Retryable(NFSProvisionerError):
    """Trying the same thing again, unchanged, can succeed (the other side was busy, down, or raced us)."""


class Permanent(NFSProvisionerError):
    """Trying the same thing again, unchanged, fails the same way: the input or the state must change first."""
