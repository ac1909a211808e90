"""Torch archives re-packed member by member, to make the damaged files real ones are not."""

import warnings
import zipfile


def repack(src, dst, *, drop=(), cut=(), last=(), twice=()):
    """The archive rewritten member by member with Python's zipfile (stored, as torch stores): members dropped,
    cut to half, moved to the end, or written a second time (a later duplicate of the same name)."""
    with zipfile.ZipFile(src) as z:
        items = [(i.filename, z.read(i)) for i in z.infolist()]
    items = sorted(items, key=lambda it: it[0].endswith(tuple(last)))  # stable: the rest keep their order
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        for name, data in items:
            if name.endswith(tuple(drop)):
                continue
            out.writestr(name, data[: len(data) // 2] if name.endswith(tuple(cut)) else data)
        for name, data in items:
            if name.endswith(tuple(twice)):
                out.writestr(name, data)
