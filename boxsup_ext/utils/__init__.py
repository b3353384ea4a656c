"""Small shared helpers: atomic file writes, output folders and user-facing errors."""

from boxsup_ext.utils.errors import InputError, run_cli
from boxsup_ext.utils.atomic import atomic_symlink, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_lines
from boxsup_ext.utils.outputs import OutputManifest, ensure_output_dir, file_sha256

__all__ = [
    "InputError",
    "run_cli",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_symlink",
    "atomic_write_json",
    "atomic_write_lines",
    "OutputManifest",
    "ensure_output_dir",
    "file_sha256",
]
