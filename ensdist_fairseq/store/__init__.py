"""The memoized teacher store (docs/store-format.md): file format, provenance, chunked writing.
Pure h5py/numpy: usable without fairseq."""
from .format import StoreReader, index_dtype, store_nbytes  # noqa: F401
from .provenance import FORMAT_VERSION, Provenance, StoreError, token_checksum  # noqa: F401
