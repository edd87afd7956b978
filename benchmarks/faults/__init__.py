"""The fault zoo: real training runs with known faults (and healthy look-alikes), diagnosed and scored.

See __main__.py for the command line, registry.py for how cases are declared and split, evaluate.py for
the scoring.
"""
