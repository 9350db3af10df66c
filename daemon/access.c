/* access.c: which identity may use which session (docs/security.md).
 *
 * A session belongs to the identity that opened (or imported) it: m->user,
 * the User-Id sepd's ZAP handler gave the sender's connection (auth.h).
 * Its owner, an operator (sepd.conf's operators), or anyone once it is
 * marked shared may use every verb on it and see it in ls; others get
 * "denied" naming the session, and never its figures. Session names are
 * one namespace: open of a name another identity holds is "exists".
 */
#include "auth.h"
#include "daemon.h"
#include "err.h"
#include "log.h"
#include "persist.h"
#include "util.h"

#include <string.h>

int sepd_access(sepd_t *d, const sep_session_t *s, const sep_msg_t *m)
{
    if (sepd_auth_may(d->auth, m->user, s->owner, s->shared))
        return 1;
    sep_log(SEP_LOG_INFO, "%s of session '%s' by %s refused: it belongs to %s", m->op, s->name,
            m->user[0] ? m->user : "an unidentified client", s->owner);
    sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_DENIED,
               "session '%s' belongs to another identity (not shared with %s)", s->name,
               m->user[0] ? m->user : "an unidentified client");
    return 0;
}

int sepd_visible(const sepd_t *d, const sep_session_t *s, const sep_msg_t *m)
{
    return sepd_auth_may(d->auth, m->user, s->owner, s->shared);
}

void sepd_access_own(sepd_t *d, sep_session_t *s, const sep_msg_t *m)
{
    (void)d;
    snprintf(s->owner, sizeof s->owner, "%s", m->user);
    s->shared = json_is_true(json_object_get(m->hdr, "shared"));
}

void sepd_share(sepd_t *d, const sep_msg_t *m)
{
    const char *name = sep_msg_str(m, "session", NULL);
    json_t *on = json_object_get(m->hdr, "shared");
    sep_session_t *s = name ? sepd_find(d, name) : NULL;
    if (!name || !json_is_boolean(on))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "share: needs \"session\" and \"shared\": true or false");
    if (!s) {
        char clip[64];
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_NOT_FOUND, "no session '%s'",
                          sep_clip(name, clip));
    }
    /* sharing is the owner's (or an operator's) to change, shared or not */
    if (!sepd_auth_may(d->auth, m->user, s->owner, 0)) {
        sep_session_t probe = *s;
        probe.shared = 0;
        sepd_access(d, &probe, m);
        return;
    }
    s->shared = json_is_true(on);
    sep_log(SEP_LOG_INFO, "session '%s' (%s) is %s", s->name, s->owner,
            s->shared ? "shared" : "its owner's alone");
    if (s->sid && !s->foreign[0])
        sepd_persist_put(d, s, s->state == SEP_SS_SUSPENDED ? SEP_STORE_SUSPENDED
                                                             : SEP_STORE_ACTIVE);
    json_t *h = sepd_info(s);
    if (h) {
        json_object_set_new(h, "op", json_string(m->op));
        json_object_set_new(h, "ok", json_true());
    }
    sepd_send(d, m->peer, m->peer_len, h, NULL, 0);
}

void sepd_hup(sepd_t *d)
{
    sepd_auth_reload(d->auth);
}
