"""kcv-bench: cold and warm timings of kcv-sd beside its peers, each system in a fresh Python process."""
