"""A bounded cache for compiled functions.

A compiled step holds its ControlNets and its traced graphs; a pipeline that
met a new ControlNet in every call would otherwise keep them all, and the
process would grow without bound. Keys that name models by `id` are safe
here because each value holds the models it was built for: an id cannot be
reused while its entry lives.
"""

import collections


class RecentlyUsed:
    """The `size` most recently used values, each built on its key's first use."""

    def __init__(self, size):
        self.size = size
        self._values = collections.OrderedDict()

    def get(self, key, build):
        """The value for `key`, from `build()` if it is not held."""
        if key in self._values:
            self._values.move_to_end(key)
        else:
            self._values[key] = build()
            if len(self._values) > self.size:
                self._values.popitem(last=False)
        return self._values[key]

    def __len__(self):
        return len(self._values)

    def values(self):
        return list(self._values.values())
