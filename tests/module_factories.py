"""Small modules that behave like awkward real architectures, shared by the rift tests."""

from __future__ import annotations

from typing import Any

from torch import nn


class VersionedLinear(nn.Linear):
    """Like torchvision's MNASNet: loading needs the module's format version from the state
    dict's ``_metadata``, which safetensors files and plain dicts do not carry."""

    _version = 2

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any,
                              *args: Any, **kwargs: Any) -> None:
        if local_metadata.get("version") is None:
            raise ValueError("version should be set to 1 or 2 instead of None")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
