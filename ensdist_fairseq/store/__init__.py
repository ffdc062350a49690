"""The memoized teacher store (docs/store-format.md): file format, provenance, chunked writing.
Pure h5py/numpy: usable without fairseq."""

from ensdist_fairseq.store.format import StoreReader, index_dtype, store_nbytes  # noqa: F401
from ensdist_fairseq.store.provenance import FORMAT_VERSION, Provenance, StoreError  # noqa: F401
