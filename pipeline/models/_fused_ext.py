"""The C++ time loops of ``fused_lstm.py``: which backend to use, and building it on first use.

``PIPELINE_FUSED_BACKEND`` chooses:

* ``auto`` (default): the C++ loops if the extension builds (or is already built), else the
  pure-PyTorch loops, with one warning per process saying why;
* ``cpp``: the C++ loops; a failed build is an error;
* ``python``: the pure-PyTorch loops; nothing is built.

The extension (``csrc/fused_lstm.cpp``) is compiled by ``torch.utils.cpp_extension.load`` into
``$XDG_CACHE_HOME/lstm-pipeline/torch_extensions/`` (``~/.cache`` without XDG_CACHE_HOME), one
folder per torch version, CPU capability and source hash, so a change of any of them builds
afresh and never reuses a stale library.  The build runs under an OS file lock so that two
processes starting at once build it once; the lock dies with its process, unlike the lock
file torch's own build leaves behind when killed, which is cleared while holding it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

ENV_VAR = "PIPELINE_FUSED_BACKEND"
BACKENDS = ("auto", "cpp", "python")
SOURCE = Path(__file__).with_name("csrc") / "fused_lstm.cpp"
OP_NAMESPACE = "pipeline_fused_lstm"
BUILD_TIMEOUT_S = 900  # waiting for another process's build; a compile takes well under this

# -ffast-math lets gcc vectorise exp/tanh through glibc's libmvec.  It is given to the compiler
# only: linking a shared library with it would add crtfastmath.o, which switches the whole
# process to flush-denormals-to-zero.  The vector width follows what torch detected on this
# CPU (the build folder is keyed by it); on the 2-core AVX-512 benchmark machine 512-bit
# vectors made the peephole forward loop about 10-20% faster than 256-bit ones.
_SIMD_FLAGS = {
    "AVX2": ["-mavx2", "-mfma"],
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mfma", "-mprefer-vector-width=512"],
}
_BASE_FLAGS = ["-O3", "-ffast-math", "-DNDEBUG"]

_state: dict[str, object] = {}


class BackendError(ValueError):
    """``PIPELINE_FUSED_BACKEND`` holds an unknown value."""


def requested_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise BackendError(f"{ENV_VAR}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def _compile_flags() -> tuple[list[str], str]:
    capability = torch.backends.cpu.get_cpu_capability()
    return _BASE_FLAGS + _SIMD_FLAGS.get(capability, []), capability


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lstm-pipeline" / "torch_extensions"


def build_directory() -> tuple[Path, str, list[str]]:
    """The folder and module name of the build for this torch, CPU and source."""
    flags, capability = _compile_flags()
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    version = torch.__version__.replace("+", "_")
    name = f"fused_lstm_{digest}"
    return cache_root() / f"torch-{version}-{capability.lower()}" / name, name, flags


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """Put the ``ninja`` wheel's binary on PATH for the build if PATH has none.

    torch's build runs ``ninja`` from PATH, and a virtual environment's bin folder is only on
    it when the environment is activated.
    """
    saved = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = os.pathsep.join((ninja.BIN_DIR, saved))
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def _build() -> None:
    """Compile (or reuse) the extension and register its ops in ``torch.ops``."""
    from filelock import FileLock

    folder, name, flags = build_directory()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f"{name}.flock"), timeout=BUILD_TIMEOUT_S)
    library = folder / f"{name}.so"
    # Written after a build completed.  Without it a library may be a killed link's partial
    # file, and loading one of those crashes the process (SIGBUS) rather than raising.
    complete = folder / "build-complete"
    with lock, _ninja_on_path():
        if complete.exists():
            # Loading directly skips torch's up-to-date check (about half a second per
            # process); the folder's name already pins the source, flags and torch.
            torch.ops.load_library(str(library))
            return
        from torch.utils import cpp_extension  # slow to import: only when building

        # Only a killed build leaves these while nobody holds our lock.
        (folder / "lock").unlink(missing_ok=True)
        library.unlink(missing_ok=True)
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            build_directory=str(folder),
            is_python_module=False,
            verbose=False,
        )
        complete.touch()


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def cpp_ops(strict: bool):
    """``torch.ops.pipeline_fused_lstm`` once built, else None (``strict``: raise instead).

    The build is tried once per process; its failure is remembered and warned about once.
    """
    if "ops" not in _state:
        try:
            _build()
            _state["ops"] = getattr(torch.ops, OP_NAMESPACE)
        except Exception as error:  # no compiler, no ninja, a compile error: all fall back
            _state["ops"] = None
            _state["error"] = error
    ops = _state["ops"]
    if ops is None:
        reason = _one_line(_state["error"])
        if strict:
            raise RuntimeError(f"{ENV_VAR}=cpp but the C++ LSTM kernels did not build: {reason}")
        if not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(
                f"fused LSTM: C++ kernels unavailable ({reason[:300]}); using the slower "
                f"pure-PyTorch loops (set {ENV_VAR}=python to skip the build)",
                RuntimeWarning,
                stacklevel=3,
            )
    return ops


def cpp_ops_for(tensor: torch.Tensor):
    """The C++ ops if they should run on ``tensor`` under the current setting, else None.

    They run on CPU float32/float64 only; CUDA and other dtypes take the PyTorch loops.
    """
    backend = requested_backend()
    if backend == "python":
        return None
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        return None
    return cpp_ops(strict=backend == "cpp")
