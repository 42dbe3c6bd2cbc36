"""chatd benchmarks: the in-process engine ceiling and the end-to-end `make bench` driver."""
