"""Compiled functions' graphs, traced and optimised once, kept on disk between processes.

The first call of a compiled UNet step spends seconds outside the maths: Keras traces every layer in Python, then
Grappler rewrites its graph of thousands of ops (docs/latency_levers.md, sections 18-19). Neither depends on weight
values, so the first process saves the graph, optimised once by Grappler for the CPU, as a function definition, and
every process (the first included) registers it with the runtime and calls it on its own variables with Grappler off
for that call only. The key covers the code, the versions, the CPU's instruction sets, what the function does and its
variables' shapes and dtypes; a function that cannot be cached (a capture that is not one of the given variables,
outputs other than tensors in tuples, a node the function definition cannot be written with) runs traced as
before, and a file that does not read is traced and written again. Pipelines keep graphs by default
on CPUs without XLA (`chosen_folder`).
"""

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import keras
import tensorflow as tf
from tensorflow.core.framework import function_pb2
from tensorflow.python.framework import op_def_registry
from tensorflow.python.eager import context
from tensorflow.python.grappler import cluster as grappler_cluster
from tensorflow.python.grappler import tf_optimizer

from kcv_sd import devices
from kcv_sd.cache import GRAPH_CACHE_VARIABLE as VARIABLE
from kcv_sd.cache import SWITCHED_OFF, keras_home

FORMAT = 3  # bump when what is saved, or how it is read, changes (2: function definitions; 3: one file)
CPU = "/job:localhost/replica:0/task:0/device:CPU:0"
SUFFIX = ".graph"


# Environment variables that change which rewrites TensorFlow makes when it optimises a graph.
GRAPH_ENVIRONMENT = ("TF_ENABLE_ONEDNN_OPTS", "TF_DISABLE_MKL", "TF_ENABLE_MKL_NATIVE_FORMAT")


def _environment_setting():
    """$KCV_SD_GRAPH_CACHE as a setting: False ("off"), a folder, or True (unset, empty or "on")."""
    value = os.environ.get(VARIABLE, "").strip()
    if value.lower() in SWITCHED_OFF:
        return False
    return Path(value) if value and value.lower() != "on" else True


def cache_dir():
    """$KCV_SD_GRAPH_CACHE where it names a folder, else under KERAS_HOME."""
    setting = _environment_setting()
    return setting if isinstance(setting, Path) else keras_home() / "kcv_sd" / "graphs"


def chosen_folder(setting, device, jit_compile):
    """The folder a pipeline keeps its graphs in, or None for none: `setting` is "auto" (on, unless the environment
    variable KCV_SD_GRAPH_CACHE is "off"), True (`cache_dir()`), False, or a folder. CPUs without XLA only: the
    cache runs graphs optimised for the CPU, and XLA compiles its own."""
    if setting == devices.AUTO:
        setting = _environment_setting()
    if device != "cpu" or jit_compile or setting in (False, None):
        return None
    return cache_dir() if setting is True else Path(setting)


def describe():
    """`kcv-sd env`'s line: whether pipelines keep graphs here by default, where, and why."""
    defaults = devices.detected_defaults()
    folder = chosen_folder(devices.AUTO, defaults.device, defaults.jit_compile)
    why = (f" ({VARIABLE}={os.environ[VARIABLE]})" if VARIABLE in os.environ
           else "" if folder else " (on a CPU without XLA only)")
    return f"graph cache: {f'on, in {folder}' if folder else 'off'}{why}"


@functools.cache
def code_digest():
    """sha256 of kcv_sd's sources: a changed layer must never run an old graph."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.relative_to(Path(__file__).parent).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def graph_key(description, variables, signature):
    """The file name of a function's graph: everything that shapes the graph, nothing that only fills it."""
    parts = [FORMAT, code_digest(), tf.__version__, keras.__version__,
             sorted(devices.cpu_flags()), {name: os.environ.get(name) for name in GRAPH_ENVIRONMENT}, description,
             [(tuple(v.shape), str(v.dtype)) for v in variables], repr(signature)]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:40]


@functools.cache
def _grappler_off():
    """A call's serialized ConfigProto that skips Grappler: the graph was optimised when it was written, and
    optimising it again costs as much as the first time."""
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config.SerializeToString()


def _renamed(library, suffix):
    """`library`'s functions renamed `<name>_<suffix>`, with the references between them: names written by one
    process must not meet the functions another process traced itself."""
    names = {function.signature.name: f"{function.signature.name}_{suffix}" for function in library.function}
    for function in library.function:
        function.signature.name = names[function.signature.name]
        for node in function.node_def:
            node.op = names.get(node.op, node.op)
            for attr in node.attr.values():
                if attr.HasField("func"):
                    attr.func.name = names.get(attr.func.name, attr.func.name)
                for called in attr.list.func:
                    called.name = names.get(called.name, called.name)
    return library


def _handle(variable):
    handle = getattr(variable, "handle", None)
    return handle if handle is not None else variable.value.handle


def _skeleton(outputs):
    """The nesting of `outputs` as JSON (lists for tuples, None for tensors); TypeError for anything else."""
    if type(outputs) in (tuple, list):
        return [_skeleton(item) for item in outputs]
    if isinstance(outputs, tf.Tensor):
        return None
    raise TypeError(f"{type(outputs).__name__} in a cached function's outputs")


def _rebuild(skeleton):
    return tuple(_rebuild(item) for item in skeleton) if isinstance(skeleton, list) else tf.zeros(())


def _optimized(graph_def, graph, outputs):
    """`graph_def` after the Grappler passes the runtime would run, placed on the CPU (its remapper fuses only
    nodes placed on a CPU)."""
    placed = tf.compat.v1.GraphDef()
    placed.CopyFrom(graph_def)
    for node in placed.node:
        node.device = CPU
    for function in placed.library.function:
        for node in function.node_def:
            node.device = CPU
    meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=placed, graph=graph)
    meta_graph.collection_def["train_op"].node_list.value.extend(name.split(":")[0] for name in outputs)
    return tf_optimizer.OptimizeGraph(tf.compat.v1.ConfigProto(), meta_graph, verbose=False,
                                      cluster=grappler_cluster.Cluster())


def _parsed(data):
    """(function library, facts of a call) from a file's bytes: the facts' JSON length (8 bytes), the JSON, the
    library. One file, written at once, so that a reader never pairs one writer's library with another's facts."""
    length = int.from_bytes(data[:8], "little")
    return function_pb2.FunctionDefLibrary.FromString(data[8 + length:]), json.loads(data[8:8 + length])


def _output_slots(node, library_signatures):
    """Each output of `node` in a function's terms: "<output arg>:<index within it>", in order."""
    signature = library_signatures.get(node.op) or op_def_registry.get(node.op)
    if signature is None:
        raise KeyError(f"op {node.op}")
    slots = []
    for arg in signature.output_arg:
        count = (node.attr[arg.number_attr].i if arg.number_attr else
                 len(node.attr[arg.type_list_attr].list.type) if arg.type_list_attr else 1)
        slots += [f"{arg.name}:{i}" for i in range(count)]
    return slots


def _function_def(graph_def, feeds, outputs, output_dtypes, name):
    """`graph_def` as a function `name` of `feeds` (its placeholders, in order) returning `outputs` (of
    `output_dtypes`), written node by node, without importing the graph into Python (whose import checks each node
    against its registered op). KeyError or IndexError for a node or op it cannot place."""
    library_signatures = {f.signature.name: f.signature for f in graph_def.library.function}
    nodes = {node.name: node for node in graph_def.node}
    function = function_pb2.FunctionDef()
    function.signature.name = name
    arguments = {}
    for i, feed in enumerate(feeds):
        node = nodes[feed.split(":")[0]]
        function.signature.input_arg.add(name=f"arg{i}", type=node.attr["dtype"].type)
        arguments[node.name] = f"arg{i}"
    slots = {}

    def reference(tensor):
        if tensor.startswith("^"):
            return None if tensor[1:] in arguments else tensor
        node_name, _, index = tensor.partition(":")
        if node_name in arguments:
            return arguments[node_name]
        if node_name not in slots:
            slots[node_name] = _output_slots(nodes[node_name], library_signatures)
        return f"{node_name}:{slots[node_name][int(index or 0)]}"

    for node in graph_def.node:
        if node.name in arguments:
            continue
        copy = function.node_def.add()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(filter(None, map(reference, node.input)))
    for i, (output, dtype) in enumerate(zip(outputs, output_dtypes)):
        function.signature.output_arg.add(name=f"output{i}", type=dtype.as_datatype_enum)
        function.ret[f"output{i}"] = reference(output)
    return function


def _packed(meta, library):
    header = json.dumps(meta).encode()
    return len(header).to_bytes(8, "little") + header + library.SerializeToString()


def _write_atomically(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as part:
        part.write(data)
    os.replace(part.name, path)


class CachedGraph:
    """`fn` compiled over `signature` (a list of nested `TensorSpec`s, as `tf.function`'s input_signature), its
    graph read from the cache or traced, optimised and written there; `variables` are every variable it may read,
    in an order that is the same in every process. `source` says which, after the first call: "cache", "traced",
    or "uncached" (traced, and run as a plain `tf.function`)."""

    def __init__(self, fn, signature, variables, description, directory=None):
        self.fn, self.signature, self.variables = fn, list(signature), list(variables)
        self.path = (Path(directory or cache_dir()) / graph_key(description, self.variables, self.signature)
                     ).with_suffix(SUFFIX)
        self.source = None
        self._call = None

    def __call__(self, *args):
        if self._call is None:
            self._call = self._build()
        return self._call(*args)

    def _build(self):
        try:
            library, meta = _parsed(self.path.read_bytes())
            self.source = "cache"
        except Exception:  # missing, half-written by a killed process, or unreadable: trace it again
            found = self._trace_and_write()
            if callable(found):
                self.source = "uncached"
                return found
            library, meta = found
            self.source = "traced"
        if "uncacheable" in meta:  # an earlier process found that this graph cannot be saved
            self.source = "uncached"
            return self._traced()
        return self._registered(library, meta)

    def _traced(self):
        return tf.function(self.fn, input_signature=self.signature, autograph=False)

    def _trace_and_write(self):
        """The traced function when it cannot be cached, else (its optimised graph as a function library, the
        facts a call needs), written."""
        traced = self._traced()
        concrete = traced.get_concrete_function()
        index = {id(_handle(v)): i for i, v in enumerate(self.variables)}
        mapping = [index.get(id(capture)) for capture in concrete.captured_inputs]
        try:
            skeleton = _skeleton(concrete.structured_outputs)
        except TypeError:
            return traced
        if None in mapping:
            return traced
        feeds = [t.name for t in concrete.inputs]
        outputs = [t.name for t in concrete.outputs]
        graph_def = _optimized(concrete.graph.as_graph_def(), concrete.graph, outputs)

        def imported(*flat):  # the optimised graph, its placeholders fed by the function's arguments
            return tf.graph_util.import_graph_def(graph_def, input_map=dict(zip(feeds, flat)),
                                                  return_elements=outputs, name="")

        specs = tf.nest.flatten(self.signature) + [tf.TensorSpec((), tf.resource)] * len(mapping)
        library = function_pb2.FunctionDefLibrary()
        try:
            wrapped = tf.compat.v1.wrap_function(imported, specs)
            library.function.append(wrapped.function_def)
            library.function.extend(wrapped.graph.as_graph_def().library.function)
            name = wrapped.function_def.signature.name
        except ValueError:
            # A node Grappler made that Python's import refuses: in 16-bit, a fused convolution whose registered
            # op takes no bfloat16 (the runtime rewrites it for oneDNN before it runs, and checks nothing there).
            # The function is then written from the graph directly.
            name = f"cached_{self.path.stem}"
            try:
                library.function.append(_function_def(graph_def, feeds, outputs,
                                                      [t.dtype for t in concrete.outputs], name))
            except (KeyError, IndexError) as error:  # an op or output it cannot place: marked, so that later
                library = function_pb2.FunctionDefLibrary()  # processes skip the offline pass
                _write_atomically(self.path, _packed({"uncacheable": f"{type(error).__name__}: {error}"}, library))
                return traced
            library.function.extend(graph_def.library.function)
        meta = {"function": name, "variables": mapping, "structure": skeleton,
                "output_dtypes": [t.dtype.name for t in concrete.outputs]}
        _write_atomically(self.path, _packed(meta, library))
        return library, meta

    def _registered(self, library, meta):
        """A call of the saved function on this process's variables: registered with the eager runtime as it was
        written (no Python graph is built), called with Grappler off."""
        ctx = context.context()
        for function in _renamed(library, self.path.stem).function:
            if not ctx.has_function(function.signature.name):
                ctx.add_function_def(function)
        name = f"{meta['function']}_{self.path.stem}"
        specs = tf.nest.flatten(self.signature)
        handles = [_handle(self.variables[i]) for i in meta["variables"]]
        dtypes = [tf.dtypes.as_dtype(dtype) for dtype in meta["output_dtypes"]]
        structure = _rebuild(meta["structure"])

        def call(*args):
            flat = [tf.convert_to_tensor(arg, spec.dtype) for arg, spec in zip(tf.nest.flatten(args), specs)]
            outputs = tf.raw_ops.StatefulPartitionedCall(args=[*flat, *handles], Tout=dtypes, f=name,
                                                         config_proto=_grappler_off(), executor_type="")
            return tf.nest.pack_sequence_as(structure, outputs)

        return call
