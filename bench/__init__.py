"""Benchmarks of hotstandby against lsyncd and rsync (run with `make bench`; not part of `make test`)."""
