# Shared by the scripts in scripts/ferry (sourced, not run).

# Top-level directories whose tracked files are owned files of the series:
# they are copied to the same path in the prepared tree.
FERRY_OWNED_DIRS="accel softmmu migration hw include qapi tests docs linux-headers"

# git in the prepared tree, with a fixed identity so that preparing the
# tree needs no git configuration and gives the same commits everywhere.
ferry_git() {
    GIT_AUTHOR_NAME=Ferry GIT_AUTHOR_EMAIL=ferry@localhost \
    GIT_COMMITTER_NAME=Ferry GIT_COMMITTER_EMAIL=ferry@localhost \
    GIT_AUTHOR_DATE="2022-12-14T00:00:00Z" GIT_COMMITTER_DATE="2022-12-14T00:00:00Z" \
        git -C "$src" -c core.autocrlf=false -c advice.detachedHead=false "$@"
}

# The patches of patches/series, in order, without comments or blank lines.
series_patches() {
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$top/patches/series"
}
