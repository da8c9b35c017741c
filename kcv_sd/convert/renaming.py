"""Renaming a checkpoint's keys by module prefix, through an explicit table.

Original-format checkpoints (CompVis/LDM Stable Diffusion, lllyasviel's
ControlNets) hold the modules diffusers has, under other names. A table maps
each original module prefix to diffusers' one and the longest table prefix
of a key renames it, so the diffusers converters (and their audit) serve
both formats. The inverse table names diffusers keys as the file does, so
that messages about a missing or mis-shaped tensor name the file's key.
"""

from kcv_sd.convert.errors import CheckpointError

_SHOWN = 8  # unknown keys listed in a message


def longest_prefix(key, table):
    """The longest dotted prefix of `key` that is in `table`, or None."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            return prefix
    return None


def replace_prefix(key, table):
    prefix = longest_prefix(key, table)
    return None if prefix is None else table[prefix] + key[len(prefix):]


class PrefixTable:
    """{original module prefix: diffusers module prefix}, both ways.

    Args:
        table: the mapping, one entry per module (or whole subtree).
        file_prefix: what the file puts before the table's keys
            (e.g. "model.diffusion_model."), for messages.
    """

    def __init__(self, table, file_prefix=""):
        self.table = table
        self.inverse = {new: old for old, new in table.items()}
        self.file_prefix = file_prefix

    def rename(self, tensors, source, what):
        """`tensors` (file prefix removed) under diffusers' names.

        Raises:
            CheckpointError: a key no table entry covers, named as in the file.
        """
        renamed, unknown = {}, []
        for key, value in tensors.items():
            new = replace_prefix(key, self.table)
            if new is None:
                unknown.append(self.file_prefix + key)
            else:
                renamed[new] = value
        if unknown:
            raise CheckpointError(
                f"{source} has {what} keys the configuration has no layer for: "
                f"{', '.join(sorted(unknown)[:_SHOWN])}."
            )
        return renamed

    def file_key(self, key):
        """The file's name for a diffusers key (for `WeightPorter` messages)."""
        old = replace_prefix(key, self.inverse)
        return self.file_prefix + (key if old is None else old)
