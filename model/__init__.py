"""The model families: each a package with its networks and how it trains, samples and reads its checkpoints
(model/patchdm: Patch-DM; model/pyramid: the Pyramid Diffusion Model). This module is the registry: ``read`` turns
any checkpoint file into the v2 dict (training/checkpoint.py), and ``load`` builds the family that file names.

A family's ``family`` module provides ``FAMILY`` (its name, the one recorded in configs and checkpoints),
``LEGACY_READERS`` (functions turning the files of earlier formats into v2 dicts), ``bundle_of(ck, path, raw)``
(what its scripts use) and ``TRAIN`` (a common.TrainSpec: what train.py needs)."""

from __future__ import annotations

from runtime.errors import CheckpointError, CLIError
from training import checkpoint as C
from .patchdm import family as patchdm
from .pyramid import family as pyramid

FAMILIES = {patchdm.FAMILY: patchdm, pyramid.FAMILY: pyramid}


def read(path) -> dict:
    """Any checkpoint file this project reads (v2, or an earlier format of any family) as a v2 dict."""
    return C.read(path, [reader for family in FAMILIES.values() for reader in family.LEGACY_READERS])


def load(path, raw: bool = False):
    """The family's bundle of any checkpoint file (Patch-DM: model.patchdm.checkpoint.Bundle). raw=True takes the raw
    weights of every network in the file instead of their EMA."""
    return bundle_of(read(path), path, raw)


def bundle_of(ck: dict, path, raw: bool = False):
    """``load`` on a checkpoint dict already read by ``read``."""
    family = FAMILIES.get(ck.get("family"))
    if family is None:
        raise CheckpointError(f"{path} is a checkpoint of the {ck.get('family')!r} family, which this version does not "
                              f"know (it knows {', '.join(FAMILIES)})")
    return family.bundle_of(ck, path, raw)


def read_resume(path, network: str | None, script: str) -> dict | None:
    """The checkpoint a run folder resumes from (its checkpoints/last.pt at ``path``): None when there is none yet;
    CLIError when it holds no training state (of ``network`` when given: another script's run)."""
    if not path.exists():
        return None
    ck = read(path)
    trained = (ck["training"] or {}).get("network")
    if trained is None or (network is not None and trained != network):
        raise CLIError(f"{path} is not a {script} checkpoint that can be resumed (it holds no training state of a "
                       f"{network} network); use another --name")
    return ck
