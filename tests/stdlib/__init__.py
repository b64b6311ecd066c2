"""CPython's own ``test.test_concurrent_futures``, run against stalwart.

``run_cpython_tests`` runs the stdlib's process-pool tests with
``stalwart.ProcessPoolExecutor`` as the class under test (one start method per
run, in a fresh interpreter); ``skips`` lists the stdlib tests that cannot apply
to stalwart, each with its reason; ``variants`` adds stalwart's default start
method to the stdlib's fork/spawn/forkserver. ``tests/test_stdlib_conformance.py``
drives it all from pytest.
"""
