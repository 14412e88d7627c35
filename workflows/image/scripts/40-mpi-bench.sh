# saje-mpi-bench (ping-pong latency and bandwidth between ranks 0 and 1, allreduce time), compiled
# with the image's mpicc; `saje image test` runs it on a 2-node pool made from the image.
command -v mpicc >/dev/null || PATH="$PREFIX/bin:$PATH"
mpicc -O2 -o "$PREFIX/bin/saje-mpi-bench" saje-mpi-bench.c
say "saje-mpi-bench built with $(command -v mpicc)"
