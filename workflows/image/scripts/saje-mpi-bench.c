/* saje-mpi-bench: what `saje image test` measures on a pool made from a SAJE image.
 *
 *   mpirun -n 2 saje-mpi-bench [small_iterations] [large_iterations] [large_bytes]
 *
 * Ranks 0 and 1 (on different nodes: one rank per node) ping-pong an 8-byte message (latency:
 * half the round trip) and a large message (bandwidth: bytes / half the round trip); then every
 * rank takes part in MPI_Allreduce of one double. Rank 0 prints one parseable line:
 *   SAJE_BENCH ranks=2 hosts=h0,h1 latency_us=... bandwidth_MBps=... allreduce_us=...
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double pingpong(int rank, char *buf, int bytes, int iterations) {
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int i = 0; i < iterations; i++) {
        if (rank == 0) {
            MPI_Send(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
    }
    return (MPI_Wtime() - start) / (2.0 * iterations); /* one way */
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size, len;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int small_iter = argc > 1 ? atoi(argv[1]) : 1000;
    int large_iter = argc > 2 ? atoi(argv[2]) : 20;
    int large = argc > 3 ? atoi(argv[3]) : 4 * 1024 * 1024;
    if (size < 2) {
        if (rank == 0) fprintf(stderr, "saje-mpi-bench needs at least 2 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char name[MPI_MAX_PROCESSOR_NAME];
    MPI_Get_processor_name(name, &len);
    char *names = rank == 0 ? malloc((size_t)size * MPI_MAX_PROCESSOR_NAME) : NULL;
    MPI_Gather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0, MPI_COMM_WORLD);
    char *buf = calloc((size_t)large, 1);
    pingpong(rank, buf, 8, 10); /* warm up */
    double latency = pingpong(rank, buf, 8, small_iter);
    pingpong(rank, buf, large, 2);
    double large_time = pingpong(rank, buf, large, large_iter);
    double value = rank, sum = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int i = 0; i < small_iter; i++) MPI_Allreduce(&value, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double allreduce = (MPI_Wtime() - start) / small_iter;
    if (rank == 0) {
        printf("SAJE_BENCH ranks=%d hosts=", size);
        for (int i = 0; i < size; i++) printf("%s%s", i ? "," : "", names + (size_t)i * MPI_MAX_PROCESSOR_NAME);
        printf(" latency_us=%.3f bandwidth_MBps=%.1f allreduce_us=%.3f allreduce_sum=%.0f\n", latency * 1e6,
               large / large_time / 1e6, allreduce * 1e6, sum);
        free(names);
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
