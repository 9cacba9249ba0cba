"""Keep frozen, externally loaded weights (the CLIP teacher) out of checkpoints."""

from __future__ import annotations

import functools
from typing import Tuple

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["exclude_from_checkpoints"]


def exclude_from_checkpoints(module: nn.Module, child: str = "") -> Tuple[RemovableHandle, ...]:
    """Keep the weights of ``module`` (or of its submodule ``child``) out of checkpoints.

    For weights that come from elsewhere (the frozen CLIP teacher, loaded from
    ``MODEL.CLIP``): a ``state_dict()`` of ``module`` or of any parent holds none of them;
    ``load_state_dict()`` ignores them when a checkpoint has them (one saved before they
    were excluded) and does not report them missing when it has not. The excluded module's
    own ``state_dict()`` still gives them.

    Args:
        module (nn.Module): the module whose hooks do the work.
        child (str): a dotted submodule name of ``module`` ("tower"); "" excludes
            ``module`` itself.

    Returns:
        tuple[RemovableHandle, ...]: the three hooks' handles.
    """
    if child:
        module.get_submodule(child)  # raises AttributeError naming a missing submodule
    sub = child + "." if child else ""
    return (
        module.register_state_dict_post_hook(functools.partial(_drop_keys, sub=sub)),
        module.register_load_state_dict_pre_hook(functools.partial(_ignore_keys, sub=sub)),
        module.register_load_state_dict_post_hook(functools.partial(_forgive_missing, sub=sub)),
    )


def _drop_keys(module, state_dict, prefix, local_metadata, *, sub: str) -> None:
    excluded = prefix + sub
    for key in [k for k in state_dict if k.startswith(excluded)]:
        del state_dict[key]
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        # the excluded module's own entry is "<excluded>" without the trailing dot
        for key in [k for k in metadata if k.startswith(excluded) or k == excluded[:-1]]:
            del metadata[key]


def _ignore_keys(module, state_dict, prefix, *args, sub: str) -> None:
    excluded = prefix + sub
    for key in [k for k in state_dict if k.startswith(excluded)]:
        del state_dict[key]
    # the post-hook has no prefix argument; it runs right after this module's subtree loads
    module.__dict__.setdefault("_excluded_while_loading", {})[sub] = excluded


def _forgive_missing(module, incompatible_keys, *, sub: str) -> None:
    loading = module.__dict__.get("_excluded_while_loading", {})
    excluded = loading.pop(sub, None)
    if not loading:
        module.__dict__.pop("_excluded_while_loading", None)
    if excluded is None:
        return
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith(excluded)]
