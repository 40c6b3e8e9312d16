"""What deleting a volume does with its data: the one rule every path uses (the delete in
``appliance.provisioner``; ``appliance.recovery`` when it records the policy of volumes that older versions made).

Two places say it. The volume record's ``on_delete`` is the class's ``onDelete`` as this appliance recorded it
when it made the volume. The PV annotation ``nfs-provisioner.io/on-delete`` is what anyone who can edit PVs left
there: a hand edit, an ``apply`` of the PV without it, a tool that strips annotations. :func:`decide`:

1. The record decides. A record written before policies were recorded has none: then the annotation decides
   when it names a policy.
2. Nothing else ever means ``delete``: a recorded policy that cannot be read, or neither a recorded policy nor
   an annotation naming one, keeps the data (``archive`` if the annotation says so, else ``retain``).
3. The annotation may keep what the record would delete, never the reverse: with ``delete`` recorded, an
   annotation that is there and is not ``delete`` keeps the data (``archive`` if it says so, else
   ``retain``), as it always did. The Kubernetes way to keep a volume remains the PV's
   ``persistentVolumeReclaimPolicy: Retain``: Kubernetes then never asks for a delete at all.

Case and surrounding whitespace are ignored everywhere (``Archive`` is ``archive``), as for the class
parameter. Every decision that does not simply follow the annotation as written (missing, unknown, overruled,
or no usable record) carries a warning, for one log line and an event on the PV.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfs_provisioner.volumes.params import OnDelete, on_delete_policy

ANNOTATION = "nfs-provisioner.io/on-delete"
"""The PV annotation that shows the volume's policy (written at provisioning; informative once a record has it)."""
KEEP: OnDelete = "retain"
"""What a delete does when no policy can be read: the least it can do, keeping the directory where it is."""
SHOWN = 64
"""Characters of an unreadable value quoted in a warning (an annotation may hold 256 KiB)."""


@dataclass(frozen=True)
class Decision:
    action: OnDelete
    """What the delete does with the directory (after the export and quota project are gone)."""
    warning: str | None = None
    """Why that is not simply what the PV annotation says, for a log line and an event; None: nothing to say."""


def decide(*, recorded: object, annotation: object) -> Decision:
    """The action for a volume whose record holds ``recorded`` (None: written before policies were recorded)
    and whose PV has ``annotation`` (None: no annotation); see the module docstring for the rule."""
    rec = on_delete_policy(recorded)
    ann = on_delete_policy(annotation)
    said = _said(annotation, ann)
    if rec is not None:
        if ann == rec:
            return Decision(rec)
        if rec != "delete" or annotation is None:
            return Decision(rec, f"{said}; the volume's record says {rec} (the class's onDelete when the volume "
                                 "was made) and decides")
        keep = _keep(ann)
        return Decision(keep, f"{said} and the volume's record says delete: {keep}, because an annotation may keep "
                              "data, never delete it")
    if recorded is None:
        if ann is not None:
            return Decision(ann)  # a record from before policies were recorded: the annotation decides
        why = "the volume's record names no deletion policy (the volume was made by an older version)"
    else:
        why = f"the volume's record holds {_show(recorded)}, not a deletion policy"
    keep = _keep(ann)
    return Decision(keep, f"{why} and {said}: {keep}, because a missing or unreadable policy never means delete")


def _keep(annotated: OnDelete | None) -> OnDelete:
    """How to keep the data: as the annotation says if it names a way to keep it, else :data:`KEEP`."""
    return annotated if annotated in ("retain", "archive") else KEEP


def _said(annotation: object, policy: OnDelete | None) -> str:
    if annotation is None:
        return f"the PV has no annotation {ANNOTATION}"
    if policy is None:
        return f"the PV annotation {ANNOTATION} is {_show(annotation)}, not delete, retain or archive"
    return f"the PV annotation {ANNOTATION} says {policy}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}..."
