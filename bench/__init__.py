"""kcv-bench: cold and warm timings of kcv-sd beside its peers, on one machine.

Every measured system runs in a fresh Python process (`bench.worker`),
so a cold start really is cold and no precision policy or compiled function
leaks from one configuration into the next.
"""
