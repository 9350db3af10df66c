/* paths.h: where sepd's files are by default.
 *
 *   run dir   $XDG_RUNTIME_DIR/sepd, else /tmp/sepd-UID (mode 0700)
 *   socket    ipc://RUN_DIR/sepd.sock; $SEPD_SOCKET overrides
 *   store     $XDG_STATE_HOME/sepd, else $HOME/.local/state/sepd
 *   model     $SEPD_MODEL, else the installed bundled model, else the
 *             source tree's copy (running from a build)
 */
#ifndef SEP_PATHS_H
#define SEP_PATHS_H

#include <stddef.h>

/* The run directory, created 0700 if absent; refused if another user
 * owns it or others may write it. */
int sep_run_dir(char *buf, size_t cap);

/* The client endpoint sepctl and sepd use when none is given. */
int sep_default_socket(char *buf, size_t cap);

int sep_default_store(char *buf, size_t cap);
const char *sep_default_model(void);

/* mkdir -p with mode for the directories made. */
int sep_mkdirs(const char *path, unsigned mode);

#endif
