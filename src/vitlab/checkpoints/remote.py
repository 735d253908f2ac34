"""Checkpoints by name or address: what `load_pretrained` accepts besides a local path.

    hf-hub:ORG/NAME[@REVISION]   a Hugging Face repository (transformers' ViT folder or timm's `timm/...`
                                 repos), fetched by huggingface_hub into its own cache (HF_HUB_CACHE, HF_TOKEN,
                                 HF_ENDPOINT and HF_HUB_OFFLINE as users know them)
    http(s)://...                any file load_pretrained reads, fetched into $VITLAB_CACHE/checkpoints
    ViT-B_16, imagenet21k/...    the official names (checkpoints/pretrained.py), fetched like a URL

A local path always wins: an existing file or folder is never taken for a name.
"""

from __future__ import annotations

import hashlib
import re
import os
import urllib.parse
from pathlib import Path

from ..download import DownloadError, cache_dir, download, is_offline
from ..errors import quiet_logger
from .errors import CheckpointError
from .pretrained import find_pretrained

HF_PREFIX = "hf-hub:"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_EXTRAS = ("preprocessor_config.json",)


def is_remote(spec: str | Path) -> bool:
    """Whether `spec` names a checkpoint to fetch rather than a local path."""
    text = str(spec)
    if Path(text).exists():
        return False
    return text.startswith((HF_PREFIX, "http://", "https://")) or find_pretrained(text) is not None


def resolve(spec: str | Path, *, progress: bool | None = None) -> Path:
    """The local path of a checkpoint: `spec` itself when it exists, else fetched (or found in a cache)."""
    text = str(spec)
    if Path(text).exists() or not is_remote(text):
        return Path(text)
    if text.startswith(HF_PREFIX):
        with quiet_logger("huggingface_hub"):  # its retries warn once each; the outcome is one line
            return fetch_hf_hub(text[len(HF_PREFIX):])
    row = find_pretrained(text)
    url = row.url if row is not None and not text.startswith(("http://", "https://")) else text
    cached = url_cache_path(url)
    if cached.is_file() and (why := not_a_checkpoint(cached)):  # cached before downloads were verified
        raise CheckpointError(f"{text}: the cached {cached} is no checkpoint ({why}); delete it to fetch it again")
    try:
        return download(url, cached, sha256=row.sha256 if row else None, progress=progress,
                        verify=not_a_checkpoint)
    except DownloadError as e:
        raise CheckpointError(f"{text}: {e}") from None


def url_cache_path(url: str) -> Path:
    """$VITLAB_CACHE/checkpoints/<hash of the URL>/<its file name>: one URL, one file. The name keeps letters,
    digits, '-', '_' and inner dots ('%00', '..' or a bare '.' cannot reach the file system)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    name = re.sub(r"[^\w.+-]", "_", name).strip(".") or "checkpoint"
    return cache_dir("checkpoints") / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def not_a_checkpoint(path: Path) -> str | None:
    """Why a downloaded file is no checkpoint file (an error page answered with 200, say), or None."""
    from .files import sniff

    try:
        kind = sniff(path)
    except CheckpointError as e:
        return str(e)
    if kind != "unknown":
        return None
    with open(path, "rb") as f:
        head = f.read(40)
    return f"the server sent no checkpoint (.npz, .safetensors or torch file) but bytes beginning {head!r}"


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(f"hf-hub:{spec}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo, revision or None


def fetch_hf_hub(spec: str) -> Path:
    """The snapshot folder of a Hub repository holding its config.json and weights (downloaded if needed)."""
    repo, revision = parse_hf_spec(spec)
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError(f"hf-hub:{spec}: needs huggingface_hub (pip install 'vitlab[hub]')") from None
    # huggingface_hub reads its environment when imported; read it now, so a change since then counts
    options = dict(repo_id=repo, revision=revision, cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                   endpoint=os.environ.get("HF_ENDPOINT") or None, local_files_only=is_offline())

    def fetch(filename: str) -> EntryNotFoundError | None:
        """Download one file; the error when the repository (or, offline, the cache) does not have it."""
        try:
            hf_hub_download(filename=filename, **options)
        except EntryNotFoundError as e:
            return e
        return None

    try:
        folder = Path(hf_hub_download(filename="config.json", **options)).parent
        missing = []
        for weights in HF_WEIGHTS:  # the first the repository has
            if (error := fetch(weights)) is None:
                break
            missing.append(error)
        else:
            if any(isinstance(e, LocalEntryNotFoundError) for e in missing):
                raise missing[0]
            raise CheckpointError(f"hf-hub:{spec}: the repository has none of {', '.join(HF_WEIGHTS)} "
                                  "(sharded or other weights are not supported)")
        for extra in HF_EXTRAS:
            fetch(extra)
    except CheckpointError:
        raise
    except Exception as e:  # huggingface_hub's own errors (not found, gated, offline, network)
        raise CheckpointError(f"hf-hub:{spec}: {hub_error_line(e)}") from None
    return folder


def hub_error_line(e: Exception) -> str:
    """huggingface_hub's message reduced to its first line, with what to do in the common cases."""
    kind = type(e).__name__
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), kind)
    if kind == "LocalEntryNotFoundError" and not is_offline():  # online, but the Hub did not answer
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return (f"the Hub ({endpoint}) cannot be reached ({root_cause(e)}) and the files are not in the Hugging "
                "Face cache; check the network (or HF_ENDPOINT) and try again")
    if kind == "LocalEntryNotFoundError" or "local_files_only" in first or kind == "OfflineModeIsEnabled":
        return ("not in the Hugging Face cache and offline mode is on (VITLAB_OFFLINE / HF_HUB_OFFLINE); "
                "fetch it once online with `vitlab download`")
    if kind == "RepositoryNotFoundError":
        return "repository not found (or private: log in with `hf auth login` or set HF_TOKEN)"
    if kind == "GatedRepoError":
        return "the repository is gated: accept its terms on the Hub, then log in or set HF_TOKEN"
    if kind == "RevisionNotFoundError":
        return "revision not found"
    return f"{kind}: {first}"


def root_cause(e: BaseException) -> str:
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}".rstrip(": ")
