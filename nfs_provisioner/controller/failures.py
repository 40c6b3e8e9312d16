"""What a failed provision means and what a refused claim is told (for ``controller.provisioning``): the state
a failed attempt leaves (:func:`state_after`) and the texts of the data-source refusals. Plain data, no I/O.
"""

from __future__ import annotations

from nfs_provisioner.controller.interface import DataSource, ProvisioningError, ProvisioningState


def state_after(e: Exception, *, previous: ProvisioningState | None, known: bool,
                recorded_before: bool) -> ProvisioningState:
    """The state a provision that raised ``e`` leaves. ``known``: this process saw an earlier attempt for the claim
    (``previous``: the state it left, None when unknown); ``recorded_before``: an earlier run had recorded the
    provision in flight before this attempt."""
    state = e.state if isinstance(e, ProvisioningError) else ProvisioningState.FINISHED
    if state is ProvisioningState.NO_CHANGE and known:
        state = previous or ProvisioningState.IN_BACKGROUND
    elif state is ProvisioningState.NO_CHANGE:
        # No earlier attempt in this process: not in progress, as in the Go library (the claim is not in its
        # claimsInProgress) -- unless an earlier run recorded it in flight, which may have left an asset.
        state = ProvisioningState.IN_BACKGROUND if recorded_before else ProvisioningState.FINISHED
    return state


def refuses(source: DataSource) -> bool:
    """Whether a data source the provisioner does not declare is refused (clone and snapshot sources: a
    ``ProvisioningFailed`` event); any other kind belongs to a volume populator (one ``Normal`` event)."""
    return source.is_snapshot or source.is_claim


def unsupported_source(source: DataSource, me: str) -> str:
    """What the claim is told about a data source that provisioner ``me`` does not declare."""
    if source.is_snapshot:
        return (f"cannot restore {source.describe()}: volume snapshots need a CSI driver, which {me} is not; "
                "no volume is provisioned")
    if source.is_claim:
        return f"{me} does not support cloning volumes (data source {source.describe()}); no volume is provisioned"
    return (f"Assuming an external populator will provision the volume: data source {source.describe()} "
            f"is not handled by {me}")


def dropped_source(manager: str) -> str:
    """What the claim is told when its data source in another namespace was dropped by the API server (set by
    ``manager``: ``decisions.dropped_source``)."""
    return (f"the claim's spec.dataSourceRef named another namespace (set by {manager}, as its managedFields "
            "show) and the API server dropped it: data sources in another namespace need the "
            "CrossNamespaceVolumeDataSource feature gate; no volume is provisioned (an empty one would pass for "
            "a copy): create the claim again with a data source in its own namespace, or none")
