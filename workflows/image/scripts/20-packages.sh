# The user's packages (packages_file in the image config): OS packages, pip requirements, and
# free shell lines (USER_SCRIPT, run last, with PREFIX and ROOT set as here).
case "$(. /etc/os-release 2>/dev/null; echo "${ID_LIKE:-${ID:-}}")" in
  *rhel*|*fedora*|*centos*) os_install ${DNF_PACKAGES:-} ;;
  *) os_install ${APT_PACKAGES:-} ;;
esac
# shellcheck disable=SC2086
pip_install ${PIP_PACKAGES:-}
if [ -n "${USER_SCRIPT:-}" ]; then
  say "running the user's script lines"
  eval "$USER_SCRIPT"
fi
say "packages done"
