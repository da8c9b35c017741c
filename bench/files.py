"""The machine-readable outputs: every figure as JSON, one row per record as CSV."""

import csv
import json

CSV_FIELDS = [
    ("system",), ("xla",), ("precision",), ("controlnet",), ("status",), ("error",), ("device",), ("pid",),
    ("cold", "interpreter_s"), ("cold", "import_s"), ("cold", "build_s"), ("cold", "first_call_s"),
    ("cold", "first_call_overhead_s"), ("cold", "generate_s"), ("cold", "total_s"),
    ("warm", "runs"), ("warm", "median_s"), ("warm", "min_s"), ("warm", "max_s"),
    ("warm", "q1_s"), ("warm", "q3_s"),
    ("stages", "text_encoding_s"), ("stages", "step_s"), ("stages", "decode_s"), ("stages", "host_overhead_s"),
    ("stages", "unet_step_s"), ("stages", "controlnet_s"), ("stages", "controlnet_step_ratio"),
    ("memory", "peak_rss_bytes"), ("memory", "peak_device_bytes"),
    ("unet", "flops_per_step"), ("unet", "achieved_flops_per_s"), ("unet", "fraction_of_float32_matmul"),
]


def write_json(report, path):
    path.write_text(json.dumps(report, indent=2))


def _field(record, keys):
    value = record
    for key in keys:
        value = (value or {}).get(key)
    return value


def write_csv(records, path):
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["_".join(keys) for keys in CSV_FIELDS] + ["notes"])
        for record in records:
            writer.writerow([_field(record, keys) for keys in CSV_FIELDS] + ["; ".join(record["notes"])])
