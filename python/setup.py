"""Build of the phenix wheel: the Python sources plus libphenix, compiled by cargo via setuptools-rust.

The extension crate is built alone (`cargo rustc --manifest-path ../extension/Cargo.toml`, i.e. only the
package `phenix-extension`), so its phenix-sql feature `loadable` never unifies with the workspace's
`bundled`. Set CARGO_TARGET_DIR to the checkout's target/ to reuse an existing release build (only the
final cdylib is relinked).
"""

from pathlib import Path

from setuptools import setup
from setuptools_rust import Binding, RustExtension

HERE = Path(__file__).resolve().parent

setup(
    rust_extensions=[
        RustExtension(
            "phenix.libphenix",
            path=str(HERE.parent / "extension" / "Cargo.toml"),
            binding=Binding.NoBinding,
            debug=False,
        )
    ],
)
