"""The one place that talks to the Hub: create the repo, upload chosen files in one commit."""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants, get_token

from pneumonia.presets import UsageError


def push_folder(
    folder: Path, repo_id: str, files: list[str], *, optional: list[str] = (), repo_type: str = "model",
    private: bool = False, dry_run: bool = False, commit_message: str = "Upload from the pneumonia-xray project",
) -> str | None:
    """Upload exactly ``files`` and those of ``optional`` that exist (paths relative to
    ``folder``) to ``repo_id``; returns the repo URL.

    Everything that can fail here fails before the first request; the upload itself is a
    single commit, so a failure leaves the repo as it was.
    """
    missing = [name for name in files if not any(folder.glob(name))]
    if missing:
        raise UsageError(f"{folder} is incomplete (missing {', '.join(missing)}): train or build it again, then push")
    files = [*files, *(name for name in optional if any(folder.glob(name)))]
    where = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    if dry_run:
        print(f"dry run: would upload to {where} ({'private' if private else 'public'} {repo_type} repo):")
        for name in files:
            for path in sorted(folder.glob(name)):
                print(f"  {path.relative_to(folder)}  ({path.stat().st_size:,} bytes)")
        return None
    api = HfApi(token=require_token())
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, allow_patterns=files,
            commit_message=commit_message,
        )
    except Exception as err:  # HTTP, auth, network: one line, the token never in it
        raise UsageError(f"pushing to {repo_id} failed ({type(err).__name__}: {_first_line(err)}); nothing was committed") from err
    print(f"pushed {len(files)} file patterns to {where}")
    return where


def set_space_variable(space_id: str, key: str, value: str, *, description: str, dry_run: bool = False) -> None:
    """Set (or replace) a variable of the Space ``space_id``; the Space restarts with it."""
    if dry_run:
        print(f"dry run: would set {key}={value} on the Space https://huggingface.co/spaces/{space_id}")
        return
    try:
        HfApi(token=require_token()).add_space_variable(space_id, key, value, description=description)
    except UsageError:
        raise
    except Exception as err:  # HTTP, auth, network: one line, the token never in it
        raise UsageError(f"setting {key} on the Space {space_id} failed ({type(err).__name__}: {_first_line(err)}): "
                         f"the model is pushed; set {key}={value} by hand in the Space's settings") from err
    print(f"set {key}={value} on the Space https://huggingface.co/spaces/{space_id}")


def require_token() -> str:
    """The user's token (HF_TOKEN, or the one saved by `hf auth login`), never printed; or a clear error."""
    if constants.HF_HUB_OFFLINE:
        raise UsageError("HF_HUB_OFFLINE is set, so nothing can be pushed: unset it (and be online), or use --dry-run")
    token = get_token()
    if not token:
        raise UsageError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a write token), then push again")
    return token


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]
