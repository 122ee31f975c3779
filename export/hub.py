"""A model hub repository through huggingface_hub's cache: one metadata call, a pinned revision, only safe files, each failure one line."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.export.source_safety import PICKLE_SUFFIXES, file_names, first_line

HUB_TIMEOUT_S = 10
# Never downloaded from the hub: pickles, other frameworks' weights, weight variants, code.
NOT_DOWNLOADED = [f"*{suffix}" for suffix in PICKLE_SUFFIXES] + [
    "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb", "*.py", "*.*.safetensors",
]


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises when it cannot connect (it is httpx2, httpx or requests by version)."""
    errors = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


class HubModel:
    """A hub repository through huggingface_hub's cache: one metadata call, then only the files asked for."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.revision, self.files = None, None
        if _offline():
            self.root = self._cached(f"offline mode (HF_HUB_OFFLINE=1) needs a local diffusers folder or a cached "
                                     f"model; {repo_id} is not in the hub cache")
        else:
            self.root = self._resolve()

    def _resolve(self) -> Path | None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

        try:
            info = HfApi().model_info(self.repo_id, timeout=HUB_TIMEOUT_S)
        except GatedRepoError:
            raise UserError(f"{self.repo_id} is gated on the model hub: accept its terms there and log in "
                            "(hf auth login)") from None
        except RepositoryNotFoundError:
            raise UserError(f"no model {self.repo_id} on the model hub (or it is private: log in with "
                            "hf auth login)") from None
        except HfHubHTTPError as exc:
            raise UserError(f"the model hub refused {self.repo_id}: {first_line(exc)}") from None
        except ValueError as exc:
            raise UserError(f"not a hub model id: {self.repo_id} ({first_line(exc)})") from None
        except _network_errors():
            return self._cached(f"cannot reach the model hub for {self.repo_id} (offline? pass a local "
                                "diffusers folder)")
        self.revision, self.files = info.sha, [s.rfilename for s in info.siblings or []]
        return None

    def _cached(self, message: str) -> Path:
        """The cached snapshot of the repository, else a UserError with `message`."""
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(self.repo_id, local_files_only=True))
        except (OSError, ValueError):
            raise UserError(message) from None

    def listing(self, folder: str) -> list[str]:
        """Names of the repository's files under `folder`, as the hub lists them (or the cache holds them)."""
        if self.files is None:
            return file_names(self.root / folder)
        return [f for f in self.files if f.startswith(f"{folder}/")]

    def download(self, patterns: list[str]) -> Path:
        """The snapshot folder with the files matching `patterns` (never pickles, variants or code)."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        if self.root is not None and self.files is None:
            return self.root
        try:
            return Path(snapshot_download(self.repo_id, revision=self.revision, allow_patterns=patterns,
                                          ignore_patterns=NOT_DOWNLOADED))
        except HfHubHTTPError as exc:
            raise UserError(f"could not download {self.repo_id}: {first_line(exc)}") from None
        except _network_errors():
            raise UserError(f"lost the model hub while downloading {self.repo_id} (offline? pass a local "
                            "diffusers folder)") from None
