/* pi by the midpoint rule on 4/(1+x^2) over [0,1], split over MPI ranks.

   usage: pi INTERVALS [FAIL_RANK]

   Every rank integrates its share of the intervals; MPI_Allreduce sums the shares, and
   MPI_Gather brings each rank's "rank host node" line to rank 0, which prints them in rank
   order followed by pi:

       rank 0 host tvm1a2b3c4d node tvmps_1a2b..._0
       ...
       pi 3.141592653589793 error 8.3e-14 intervals 2000000 ranks 4
       library Open MPI v5.0.8, ...        (the first line of MPI_Get_library_version)

   "node" is the Azure Batch node the rank runs on: AZ_BATCH_NODE_ID as its per-node daemon
   (prted, hydra_pmi_proxy; the rank's parent process) saw it, because launchers forward
   mpirun's own environment, and so the primary's AZ_BATCH_NODE_ID, to every rank. Outside
   Linux or without such a daemon it falls back to the rank's own AZ_BATCH_NODE_ID.

   FAIL_RANK >= 0 makes that rank report itself on stderr and call MPI_Abort(3): the way a
   crashing rank looks to the launcher (used by the tests). It waits a second between the two:
   an abort makes the launcher kill every rank at once, and MPICH's hydra can then drop what a
   rank on another node wrote just before (its proxy forwards the abort before the rank's
   stderr), so the message would reach no log. */
#include <mpi.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINE 256

static void node_id(char *out, size_t size) {
    char path[64], buf[65536];
    const char *own = getenv("AZ_BATCH_NODE_ID");
    snprintf(out, size, "%s", own ? own : "-");
    snprintf(path, sizeof path, "/proc/%d/environ", (int)getppid());
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
        if (!strncmp(buf + i, "AZ_BATCH_NODE_ID=", 17)) {
            snprintf(out, size, "%s", buf + i + 17);
            return;
        }
}

int main(int argc, char **argv) {
    int rank, size, len;
    char host[MPI_MAX_PROCESSOR_NAME], node[128], line[LINE];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long intervals = argc > 1 ? atol(argv[1]) : 1000000;
    int fail_rank = argc > 2 ? atoi(argv[2]) : -1;
    if (intervals < 1) intervals = 1000000;
    MPI_Get_processor_name(host, &len);
    node_id(node, sizeof node);

    if (rank == fail_rank) {
        fprintf(stderr, "pi: rank %d on host %s (node %s) fails on purpose\n", rank, host, node);
        fflush(stderr);
        sleep(1); /* let the launcher forward the line before the abort tears the job down */
        MPI_Abort(MPI_COMM_WORLD, 3);
    }

    double h = 1.0 / (double)intervals, local = 0.0, pi = 0.0;
    for (long i = rank; i < intervals; i += size) {
        double x = h * ((double)i + 0.5);
        local += 4.0 / (1.0 + x * x);
    }
    local *= h;
    MPI_Allreduce(&local, &pi, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);

    snprintf(line, LINE, "rank %d host %s node %s", rank, host, node);
    char *all = rank == 0 ? malloc((size_t)size * LINE) : NULL;
    MPI_Gather(line, LINE, MPI_CHAR, all, LINE, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        for (int r = 0; r < size; r++) printf("%s\n", all + (size_t)r * LINE);
        printf("pi %.15f error %.1e intervals %ld ranks %d\n", pi, fabs(pi - M_PI), intervals, size);
        char version[MPI_MAX_LIBRARY_VERSION_STRING];
        MPI_Get_library_version(version, &len);
        version[strcspn(version, "\n")] = 0;
        printf("library %s\n", version);
        free(all);
    }
    MPI_Finalize();
    return 0;
}
