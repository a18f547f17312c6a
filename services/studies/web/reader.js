/* synthrad reader study — the reading page (served at /study/).
 *
 * Flow:
 *   boot → a "#token=" link signs in at once (the token is stored, then removed from the URL);
 *          a token stored by an earlier visit only after "Continue as <name> (<study>)?" (#resume),
 *          because a reading-room workstation is shared
 *        → GET session → resend this reader's pending (unacknowledged) answer, if any → GET cases/current
 *        → show the case (images are fetched with the Authorization header, decoded to grey values)
 *        → the reader chooses, rates the Likert questions, presses Enter / "Next"
 *        → POST answers (pending copy in localStorage first, kept per study and reader; retried with the
 *          same idempotency key)
 *        → next case … → "All N cases answered".
 * Only network failures, 408, 429, 502, 503 and 504 are retried by themselves; any other error stops and
 * shows the server's `detail` with a Retry button. Sign out waits for an answer that is not saved yet.
 * Server strings are only ever written with textContent. No inline scripts/styles (strict CSP).
 */
'use strict';
(() => {
  const TOKEN_KEY = 'synthrad.study.token';
  const PENDING_PREFIX = 'synthrad.study.pending.';   // + <study id>.<reader id>
  const LEGACY_PENDING_KEY = 'synthrad.study.pending';  // one key for everybody (older pages)
  const TOKEN_RE = /^[a-z0-9][a-z0-9-]{0,39}\.r\.[A-Za-z0-9_-]+={0,2}$/;
  const OWNER_RE = /^[a-z0-9][a-z0-9-]{0,39}\.o\./;
  const DAMAGED_LINK = 'That sign-in link is damaged: paste the token instead';
  const CHOICE_LABELS = { left: 'Left is synthetic', right: 'Right is synthetic', undecided: 'Undecided',
    real: 'Real', synthetic: 'Synthetic' };
  const CHOICE_KEYS = { pair: { l: 'left', r: 'right', u: 'undecided' },
    single: { r: 'real', s: 'synthetic', u: 'undecided' } };
  // Shown in #status on the first case after the kind changed (pairs first, then single images).
  const KIND_NOTICE = { single: 'Now single images: R real · S synthetic · U undecided',
    pair: 'Now pairs: L left is synthetic · R right is synthetic · U undecided' };
  const RETRY_STATUS = new Set([408, 429, 502, 503, 504]);
  const WL_DEFAULT = { width: 256, level: 128 };
  const ZOOM_MIN = 0.5, ZOOM_MAX = 16, ZOOM_STEP = 1.25;
  const CANVAS_OF_SLOT = { left: 'image-left', right: 'image-right', single: 'image-single' };

  const $ = (id) => document.getElementById(id);
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  // make('span', {className, textContent}, ...children): DOM building without innerHTML.
  const make = (tag, props = {}, ...kids) => { const e = Object.assign(document.createElement(tag), props); e.append(...kids); return e; };

  const state = {
    token: null, sid: null, session: null,
    generation: 0,        // bumped on sign-in/out: requests of an older generation are abandoned
    case: null,           // the CASE shown (null while loading or when done)
    choice: null, ratings: [], active: 0, key: null,  // the answer being composed
    sentCore: null,       // JSON of the last answer sent with `key` (a changed answer gets a new key)
    busy: false,          // a case load or a submission is in flight: controls disabled
    submitting: false,    // an answer is on its way to the server (sign-out waits)
    retry: null,          // what #retry does (the action that failed)
    notice: '',           // the case's own line in #status (kind change, earlier answer)
    lastKind: null,       // kind of the case shown before (for the kind-change notice)
    done: false, answered: 0, total: 0,
    view: { zoom: 1, panX: 0, panY: 0 },
    wl: { ...WL_DEFAULT },
    images: [],           // [{slot, canvas, w, h, grey, src, srcCtx, data}]
    connLost: false, drawQueued: false,
  };

  // ---------------------------------------------------------------- storage (never fatal)
  function store(key, value) {
    try { if (value === null) localStorage.removeItem(key); else localStorage.setItem(key, value); }
    catch (e) { /* private mode etc.: keep working without persistence */ }
  }
  function load(key) { try { return localStorage.getItem(key); } catch (e) { return null; } }
  function parse(text) { try { return JSON.parse(text || 'null'); } catch (e) { return null; } }

  /* Pending answers are kept per study and reader, so that another reader signing in on this browser
   * never resends or deletes them; they are only read once the session says who is signed in. */
  const readerId = () => (state.session && state.session.reader ? state.session.reader.id : null);
  const pendingKey = () => (readerId() ? `${PENDING_PREFIX}${state.sid}.${readerId()}` : null);
  const ownPending = (p) => !!(p && p.body && p.sid === state.sid && p.reader === readerId());
  function readPending() {
    const k = pendingKey();
    const p = k ? parse(load(k)) : null;
    return ownPending(p) ? p : null;
  }
  function writePending(p) { const k = pendingKey(); if (k) store(k, JSON.stringify(p)); }
  function clearPending() { const k = pendingKey(); if (k) store(k, null); }
  // An answer an older version of this page left under its one shared key: taken over only by its reader.
  function adoptLegacyPending() {
    const p = parse(load(LEGACY_PENDING_KEY));
    if (!ownPending(p)) return;
    if (!readPending()) writePending(p);
    store(LEGACY_PENDING_KEY, null);
  }

  // 32 hex characters from crypto.getRandomValues (randomUUID is missing in insecure contexts).
  const newKey = () => Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');

  // ---------------------------------------------------------------- network
  /* An error the server answered with: `detail` its text, `error` its kind ("internal", "batch_damaged",
   * "conflict" …), `errorId` the log entry of a server-side failure; `message` is what the reader sees. */
  class ApiError extends Error {
    constructor(status, data) {
      const detail = detailOf(data, status);
      const errorId = data && typeof data.error_id === 'string' && data.error_id ? data.error_id : null;
      super(errorId && !detail.includes(errorId) ? `${detail} (error id ${errorId})` : detail);
      this.status = status; this.detail = detail; this.errorId = errorId;
      this.error = data && typeof data.error === 'string' ? data.error : null;
    }
  }
  class Abandoned extends Error {}  // the reader signed out meanwhile: drop the result silently

  const { detailOf } = window.StudyCommon;  // common.js
  const base = () => `/v1/studies/${encodeURIComponent(state.sid)}`;

  // Retry-After: delta-seconds or an HTTP date → milliseconds (null when absent or unreadable).
  function retryAfterMs(res) {
    const h = (res.headers.get('Retry-After') || '').trim();
    if (!h) return null;
    if (/^\d+(\.\d+)?$/.test(h)) return Number(h) * 1000;
    const t = Date.parse(h);
    return Number.isNaN(t) ? null : Math.max(0, t - Date.now());
  }

  /* fetch with the bearer token. Network failures (fetch throws, or the body breaks off) and 408, 429,
   * 502, 503, 504 are retried with backoff 1, 2, 4 … 10 s, or after Retry-After when the server sends
   * it (the same request, so a POST keeps its idempotency key) while #status says so. 401 signs out.
   * Any other error (500 "internal" / "batch_damaged", 4xx) raises ApiError at once. */
  async function api(path, { method = 'GET', body, blob = false } = {}) {
    const gen = state.generation;
    let delay = 1000;
    for (;;) {
      let res = null, wait = null;
      try {
        res = await fetch(path, {
          method, cache: 'no-store',
          headers: Object.assign({ Authorization: `Bearer ${state.token}`, Accept: blob ? '*/*' : 'application/json' },
            body === undefined ? {} : { 'Content-Type': 'application/json' }),
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (e) { res = null; }
      if (gen !== state.generation) throw new Abandoned();
      if (res && res.ok) {
        let out, broken = false;
        try { out = blob ? await res.blob() : await res.json(); }
        catch (e) {
          if (e && e.name === 'SyntaxError') throw new ApiError(res.status, { detail: 'The server sent a reply this page cannot read.' });
          broken = true;  // the connection broke off mid-body: like a network failure
        }
        if (gen !== state.generation) throw new Abandoned();
        if (!broken) {
          if (state.connLost) { state.connLost = false; restoreStatus(); }
          return out;
        }
      } else if (res && !RETRY_STATUS.has(res.status)) {
        const data = await res.json().catch(() => ({}));
        if (gen !== state.generation) throw new Abandoned();
        state.connLost = false;
        if (res.status === 401) { signOut(detailOf(data, 401)); throw new Abandoned(); }
        throw new ApiError(res.status, data);
      } else if (res) {
        wait = retryAfterMs(res);
        await res.body?.cancel().catch(() => {});
      }
      state.connLost = true;
      const ms = wait === null ? delay : clamp(wait, 500, 600000);
      setStatus(res ? `The server is busy (${res.status}) — retrying in ${Math.ceil(ms / 1000)} s…`
        : 'Connection lost — retrying…', 'warn');
      await sleep(ms);
      if (gen !== state.generation) throw new Abandoned();
      delay = Math.min(delay * 2, 10000);
    }
  }

  // ---------------------------------------------------------------- sign-in / resume / sign-out
  function showView(name) {
    $('signin').hidden = name !== 'signin';
    $('resume').hidden = name !== 'resume';
    $('reader').hidden = name !== 'reader';
  }

  function showSignin(message) {
    showView('signin');
    $('signin-error').textContent = message || '';
    $('token').focus();
  }

  // Leaves the reader's pending answer (if any) in storage: it is theirs and sent when they sign in again.
  function signOut(message) {
    state.generation++;
    state.token = state.sid = state.session = state.case = null;
    state.busy = state.done = state.submitting = state.connLost = false;
    state.retry = null; state.notice = ''; state.lastKind = null;
    store(TOKEN_KEY, null);
    showSignin(message);
  }

  /* "Sign out" and "Not you?": not while an answer is on its way or not acknowledged yet (the reason goes
   * to #status). When the server cannot be reached or refused it, the reader may still leave after a
   * confirmation: the answer stays in this browser and is sent when that reader signs in again. */
  function trySignOut() {
    const who = state.session && state.session.reader ? state.session.reader.name : '';
    const atResume = !$('resume').hidden;
    const whose = atResume && who ? `${who}’s last answer` : 'Your answer';
    let why = null;
    if (state.submitting) {
      why = `${whose} is being saved: ${atResume ? 'switching' : 'signing out'} is possible once it is saved.`;
      if (!state.connLost) { setStatus(why, 'warn'); return; }
    } else if (readPending()) {
      why = `${whose} has not been saved yet: press ${atResume ? 'Continue' : 'Retry'} to send it first.`;
    }
    if (why && !window.confirm(`${why}\n\n${atResume ? 'Sign in with another token' : 'Sign out'} anyway? `
        + 'The answer stays in this browser and is sent the next time this reader signs in.')) {
      setStatus(why, 'warn');
      return;
    }
    signOut('');
  }

  // Accepts a bare token or a whole sign-in link pasted into the field; null for a damaged link.
  function cleanToken(text) {
    const t = (text || '').trim();
    const m = t.match(/#token=([^&\s]*)/);
    if (!m) return t;
    try { return decodeURIComponent(m[1]).trim(); } catch (e) { return null; }
  }

  // "#token=…" → the token (removed from the URL); DAMAGED when it cannot be decoded or is no reader token.
  const DAMAGED = {};
  function takeHashToken() {
    const m = location.hash.match(/^#token=([^&]*)/);
    if (!m) return null;
    history.replaceState(null, '', location.pathname + location.search);
    let t;
    try { t = decodeURIComponent(m[1]).trim(); } catch (e) { return DAMAGED; }
    return TOKEN_RE.test(t) ? t : DAMAGED;
  }

  function useToken(token) {
    state.token = token;
    state.sid = token.split('.')[0];
    state.session = null; state.case = null; state.done = false;
    state.retry = null; state.notice = ''; state.lastKind = null; state.connLost = false; state.submitting = false;
  }

  /* A token stored by an earlier visit: ask first who is at the workstation. Continue (focused; Enter)
   * signs in; "Not you?" forgets the token. A pending answer of that reader is sent meanwhile. */
  async function resume(token) {
    const gen = ++state.generation;
    useToken(token);
    showView('resume');
    $('resume-question').hidden = true;
    $('resume-continue').disabled = true;
    setStatus('Checking the saved sign-in…');
    try {
      const s = await api(`${base()}/session`);
      state.session = s;
      $('resume-name').textContent = s.reader && s.reader.name ? s.reader.name : (s.reader && s.reader.id) || '';
      $('resume-study').textContent = s.study.title || s.study.id;
      $('resume-question').hidden = false;
      $('resume-continue').disabled = false;
      $('resume-continue').focus();
      setStatus('');
      adoptLegacyPending();
      const p = readPending();
      if (!p) return;
      state.submitting = true;
      setStatus(`Saving ${s.reader.name}’s last answer…`);
      try { await postAnswer(p.body); setStatus(''); }
      catch (e) {
        if (e instanceof Abandoned) return;
        setStatus(`${s.reader.name}’s last answer was not saved: ${e instanceof ApiError ? e.message : e}`, 'error');
      } finally { if (gen === state.generation) state.submitting = false; }
    } catch (e) {
      if (e instanceof Abandoned) return;
      if (e instanceof ApiError && (e.status === 403 || e.status === 404)) { signOut(e.message); return; }
      $('resume-continue').disabled = false;
      $('resume-continue').focus();
      setStatus(`The saved sign-in could not be checked: ${e instanceof ApiError ? e.message : e}. `
        + 'Continue to try again, or sign in with another token.', 'error');
    }
  }

  async function start(token) {
    const gen = ++state.generation;
    useToken(token);
    state.busy = true;
    showView('reader');
    $('done').hidden = true; $('done-previous').hidden = true; $('retry').hidden = true;
    setStatus('Loading…');
    updateControls();
    try {
      const s = await api(`${base()}/session`);
      state.session = s;
      state.answered = s.answered; state.total = s.total;
      $('study-title').textContent = s.study.title || s.study.id;
      document.title = `${s.study.title || s.study.id} — reader study`;
      $('reader-name').textContent = s.reader && s.reader.name ? s.reader.name : '';
      $('instructions').textContent = s.study.instructions || '';
      $('instructions').hidden = !s.study.instructions;
      $('help-backspace').hidden = !s.study.allow_revise;
      adoptLegacyPending();
      const note = await resendPending();
      await loadCase(`${base()}/cases/current`);
      if (note) setStatus(note, 'error');
    } catch (e) {
      // A token for a study that does not exist (any more) or is closed: back to sign-in.
      if (e instanceof ApiError && !state.session && (e.status === 403 || e.status === 404)) signOut(e.message);
      else failed(e, () => start(token));
    } finally { if (gen === state.generation) { state.busy = false; updateControls(); } }
  }

  // ---------------------------------------------------------------- answers
  /* POST one answer. The caller stored it as pending before; it is cleared once the server has
   * acknowledged it (200, `replayed` or not) or refused it for good (4xx); after a server-side failure
   * (5xx) it stays, to be sent again with the same key. Returns the server's reply, or null on 409. */
  async function postAnswer(body) {
    try {
      const r = await api(`${base()}/answers`, { method: 'POST', body });
      clearPending();
      state.answered = r.answered; state.total = r.total;
      return r;
    } catch (e) {
      if (e instanceof ApiError && e.status < 500) {
        clearPending();
        if (e.status === 409) return null;  // answered already (another tab)
      }
      throw e;
    }
  }

  /* On sign-in: this reader's answer sent before the page was closed but never acknowledged is sent
   * again. Returns a message when the server refused it; a server-side failure stops the sign-in. */
  async function resendPending() {
    const p = readPending();
    if (!p) return '';
    const gen = state.generation;
    state.submitting = true;
    setStatus('Sending your last answer…');
    try { await postAnswer(p.body); setStatus(''); return ''; }
    catch (e) {
      if (!(e instanceof ApiError) || e.status >= 500) throw e;
      return `Your last answer was not saved: ${e.message}`;
    } finally { if (gen === state.generation) state.submitting = false; }
  }

  function missingParts() {
    const missing = [];
    if (!state.choice) {
      const keys = Object.keys(CHOICE_KEYS[state.case.kind] || {}).map((k) => k.toUpperCase()).join(', ');
      missing.push(`choose an answer (${keys})`);
    }
    const open = state.ratings.filter((r) => r === null).length;
    if (open) missing.push(`rate ${open === 1 ? 'the remaining question' : `${open} more questions`} (1–5)`);
    return missing.length ? `Please ${missing.join(' and ')}.` : '';
  }

  async function submit() {
    if (state.busy || !state.case) return;
    const missing = missingParts();
    if (missing) { setStatus(missing, 'warn'); return; }
    const c = state.case, gen = state.generation;
    const core = {
      case_id: c.case_id, choice: state.choice,
      likert: (c.likert || []).map((q, i) => ({ slot: q.slot, finding: q.finding, rating: state.ratings[i] })),
    };
    // The same answer again (Retry, a double Enter) keeps its key; a changed one gets a new key.
    const coreJson = JSON.stringify(core);
    if (state.sentCore !== null && state.sentCore !== coreJson) state.key = newKey();
    state.sentCore = coreJson;
    const body = { ...core, idempotency_key: state.key };
    // Keep the answer before sending, so that a closed tab or a crash resends it on return.
    writePending({ sid: state.sid, reader: readerId(), case_id: c.case_id, position: c.position, body,
      saved_at: new Date().toISOString() });
    state.busy = true; state.submitting = true; $('retry').hidden = true; updateControls();
    setStatus('Saving…');
    let saved = false;
    try {
      const r = await postAnswer(body);  // `replayed: true` (sent before / unchanged): advances the same way
      saved = true; state.submitting = false;
      setStatus('Loading the next case…');
      const revise = state.session.study.allow_revise;
      // Revising earlier cases walks forward through the answered ones; otherwise the next open case.
      if (r && revise && c.position + 1 < r.answered) await loadCase(`${base()}/cases/${c.position + 1}`);
      else await loadCase(`${base()}/cases/current`);
    } catch (e) {
      if (gen !== state.generation) return;
      // Saved but the next case failed to load: "Retry" reloads everything. Refused (422 …): the reader
      // corrects the answer, which then gets a new key. A server-side failure: "Retry" sends it again.
      if (saved) { state.case = null; failed(e, () => start(state.token)); }
      else {
        if (e instanceof ApiError && e.status < 500) { state.key = newKey(); state.sentCore = null; }
        failed(e, submit);
      }
    } finally { if (gen === state.generation) { state.submitting = false; state.busy = false; updateControls(); } }
  }

  async function previous() {
    if (state.busy || !state.session || !state.session.study.allow_revise) return;
    const pos = state.done ? state.total - 1 : (state.case ? state.case.position - 1 : -1);
    if (pos < 0) return;
    const gen = state.generation;
    state.busy = true; updateControls();
    try { await loadCase(`${base()}/cases/${pos}`); }
    catch (e) { failed(e, state.case ? previous : () => start(state.token)); }
    finally { if (gen === state.generation) { state.busy = false; updateControls(); } }
  }

  // Errors that reach the surface: `detail` (and the error id) in #status, and "Retry" (the failed action).
  function failed(e, retry) {
    if (e instanceof Abandoned) return;
    const msg = e instanceof ApiError ? e.message : `Something went wrong: ${e && e.message ? e.message : e}`;
    setStatus(msg, 'error');
    state.retry = retry || (() => start(state.token));
    $('retry').hidden = false;
  }

  // ---------------------------------------------------------------- cases and images
  async function loadCase(path) {
    const r = await api(path);
    if (r.done || !r.case) { showDone(); return; }
    const images = await Promise.all(r.case.images.map(loadImage));
    showCase(r.case, images);
  }

  /* Fetch an image with the token, decode it without colour conversion and keep its grey values
   * (the red channel of the 8-bit greyscale PNG); `src` is a canvas of the natural size that holds
   * the window/levelled rendition, scaled smoothly onto the visible canvas by draw(). */
  async function loadImage(img) {
    const url = new URL(img.url, location.origin);
    if (url.origin !== location.origin) throw new Error('image outside this site refused');
    const blob = await api(url.pathname + url.search, { blob: true });
    const bmp = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const w = bmp.width, h = bmp.height, src = make('canvas', { width: w, height: h });
    const srcCtx = src.getContext('2d', { willReadFrequently: true });
    srcCtx.drawImage(bmp, 0, 0); bmp.close();
    const data = srcCtx.getImageData(0, 0, w, h);
    const grey = new Uint8Array(w * h);
    for (let i = 0; i < grey.length; i++) grey[i] = data.data[4 * i];
    return { slot: img.slot, canvas: $(CANVAS_OF_SLOT[img.slot]), w, h, grey, src, srcCtx, data };
  }

  function showCase(c, images) {
    state.case = c; state.done = false; state.total = c.total;
    state.images = images.filter((im) => im.canvas);
    state.key = newKey(); state.sentCore = null;
    state.choice = c.answer ? c.answer.choice : null;
    const qs = c.likert || [];
    state.ratings = qs.map((q) => {
      const prev = c.answer && (c.answer.likert || []).find((a) => a.slot === q.slot && a.finding === q.finding);
      return prev ? prev.rating : null;
    });
    const firstOpen = state.ratings.indexOf(null);
    state.active = firstOpen < 0 ? 0 : firstOpen;

    $('done').hidden = true; $('done-previous').hidden = true;
    $('viewer').hidden = false; $('controls').hidden = false; $('retry').hidden = true;
    const slots = new Set(state.images.map((im) => im.slot));
    for (const slot of Object.keys(CANVAS_OF_SLOT)) $(`pane-${slot}`).hidden = !slots.has(slot);
    $('viewer').dataset.kind = c.kind;
    $('progress').textContent = `Case ${c.position + 1} of ${c.total}`;
    setProgressBar();
    buildChoices(c);
    buildLikert(qs);
    resetView();
    // Pairs come first, then single images: the first case of the other kind says so (and its keys).
    const changed = state.lastKind !== null && state.lastKind !== c.kind;
    state.lastKind = c.kind;
    const notes = [];
    if (changed && KIND_NOTICE[c.kind]) notes.push(KIND_NOTICE[c.kind]);
    if (c.answer) notes.push('Your earlier answer is shown; submit to change it.');
    state.notice = notes.join(' — ');
    restoreStatus();
  }

  function showDone() {
    state.case = null; state.done = true; state.images = []; state.notice = '';
    state.answered = state.total;
    $('viewer').hidden = true; $('controls').hidden = true; $('retry').hidden = true;
    $('progress').textContent = `${state.total} of ${state.total} answered`;
    setProgressBar();
    $('done').textContent = `All ${state.total} cases answered. Thank you.`; $('done').hidden = false;
    $('done-previous').hidden = !(state.session && state.session.study.allow_revise && state.total > 0);
  }

  function setProgressBar() {
    const bar = $('progress-bar');
    bar.max = Math.max(1, state.total);
    bar.value = state.answered;
    bar.title = `${state.answered} of ${state.total} answered`;
  }

  // ---------------------------------------------------------------- answer controls
  function buildChoices(c) {
    const keyOf = {};
    for (const [k, v] of Object.entries(CHOICE_KEYS[c.kind] || {})) keyOf[v] = k.toUpperCase();
    $('choices').replaceChildren(...c.choices.map((choice) => {
      const b = make('button', { type: 'button', id: `choice-${choice}`, className: 'choice',
        textContent: CHOICE_LABELS[choice] || choice, title: keyOf[choice] ? `Key: ${keyOf[choice]}` : '' });
      b.dataset.choice = choice;
      if (keyOf[choice]) b.setAttribute('aria-keyshortcuts', keyOf[choice]);
      b.addEventListener('click', () => choose(choice));
      return b;
    }));
    // The key legend next to the buttons: always the keys of this case's kind.
    $('choice-keys').textContent = c.choices.filter((x) => keyOf[x])
      .map((x) => `${keyOf[x]}: ${CHOICE_LABELS[x] || x}`).join(' · ');
    $('choice-keys').dataset.kind = c.kind;
    $('choices').dataset.kind = c.kind;
    markChoice();
  }

  function choose(choice) {
    if (state.busy || !state.case || !state.case.choices.includes(choice)) return;
    state.choice = choice; markChoice(); restoreStatus();
  }

  function markChoice() {
    for (const b of $('choices').querySelectorAll('button')) {
      b.setAttribute('aria-pressed', String(b.dataset.choice === state.choice));
    }
  }

  const questionText = (q) => q.text || `Is ${String(q.finding).replace(/_/g, ' ')} present? (${q.slot} image)`;

  // One <fieldset class="likert-row" data-slot data-finding> per question, radios likert-<i>-<1..5>.
  function buildLikert(qs) {
    const labels = (state.session && state.session.likert_labels) || {};
    $('likert').hidden = qs.length === 0;
    $('likert').replaceChildren(...qs.map((q, i) => {
      const scale = make('div', { className: 'likert-scale' });
      for (let n = 1; n <= 5; n++) {
        const input = make('input', { type: 'radio', name: `likert-${i}`, id: `likert-${i}-${n}`, value: String(n),
          checked: state.ratings[i] === n });
        input.addEventListener('change', () => rate(i, n));
        scale.append(make('label', { title: `${n}: ${labels[n] || ''}` }, input,
          make('span', { className: 'likert-num', textContent: String(n) }),
          make('span', { className: 'likert-text', textContent: labels[n] || '' })));
      }
      const row = make('fieldset', { className: 'likert-row' }, make('legend', { textContent: questionText(q) }), scale);
      Object.assign(row.dataset, { slot: q.slot, finding: q.finding, index: String(i) });
      row.addEventListener('pointerdown', () => { state.active = i; markLikert(); });
      return row;
    }));
    markLikert();
  }

  // Rate question i and move the highlight to the next question.
  function rate(i, n) {
    if (state.busy || i < 0 || i >= state.ratings.length) return;
    state.ratings[i] = n;
    if ($(`likert-${i}-${n}`)) $(`likert-${i}-${n}`).checked = true;
    state.active = Math.min(i + 1, state.ratings.length - 1);
    markLikert(); restoreStatus();
  }

  function markLikert() {
    for (const row of $('likert').querySelectorAll('.likert-row')) {
      const on = Number(row.dataset.index) === state.active;
      row.classList.toggle('active', on);
      if (on) row.setAttribute('aria-current', 'true'); else row.removeAttribute('aria-current');
      row.classList.toggle('answered', state.ratings[Number(row.dataset.index)] !== null);
    }
  }

  // Disable everything that changes or sends the answer while a request is in flight.
  function updateControls() {
    const off = state.busy || !state.case;
    for (const el of $('controls').querySelectorAll('button, input')) el.disabled = off;
    $('retry').disabled = state.busy;
    const revise = !!(state.session && state.session.study.allow_revise);
    $('previous').hidden = !(revise && state.case && state.case.position > 0);
    $('done-previous').disabled = state.busy;
  }

  // #status of the reading view, or #resume-status while the resume question is shown.
  function setStatus(text, kind) {
    const el = $('resume').hidden ? $('status') : $('resume-status');
    el.textContent = text || '';
    el.className = `status${kind ? ` ${kind}` : ''}`;
  }
  // Back to the case's own line (kind change, earlier answer), or empty.
  function restoreStatus() { setStatus(state.notice, state.notice ? 'notice' : ''); }

  // ---------------------------------------------------------------- viewing: zoom, pan, window/level
  function resetView() {
    state.view = { zoom: 1, panX: 0, panY: 0 };
    state.wl = { ...WL_DEFAULT };
    applyWindow();
  }

  // output = clamp((v − (L − W/2)) / W, 0, 1) · 255, computed once per grey value (a lookup table).
  function applyWindow() {
    const { width: W, level: L } = state.wl;
    const lo = L - W / 2;
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) lut[v] = Math.round(clamp((v - lo) / W, 0, 1) * 255);
    for (const im of state.images) {
      const d = im.data.data, g = im.grey;
      for (let i = 0, j = 0; i < g.length; i++, j += 4) {
        const o = lut[g[i]];
        d[j] = o; d[j + 1] = o; d[j + 2] = o; d[j + 3] = 255;
      }
      im.srcCtx.putImageData(im.data, 0, 0);
    }
    $('wl').textContent = `W ${W} / L ${L}`;
    Object.assign($('wl').dataset, { width: String(W), level: String(L) });
    scheduleDraw();
  }

  function setWindow(width, level) {
    const w = Math.round(clamp(width, 1, 512)), l = Math.round(clamp(level, 0, 255));
    if (w === state.wl.width && l === state.wl.level) return;
    state.wl = { width: w, level: l };
    applyWindow();
  }

  // Zoom by `factor` keeping the point (px, py) — offset from the canvas centre in CSS px — in place.
  function zoomAt(factor, px = 0, py = 0) {
    const v = state.view;
    const z = clamp(v.zoom * factor, ZOOM_MIN, ZOOM_MAX), f = z / v.zoom;
    v.panX = px - (px - v.panX) * f; v.panY = py - (py - v.panY) * f; v.zoom = z;
    scheduleDraw();
  }

  function scheduleDraw() {
    if (state.drawQueued) return;
    state.drawQueued = true;
    requestAnimationFrame(() => { state.drawQueued = false; draw(); });
  }

  // Every visible canvas: fit the image (contain), then the shared zoom and pan; smooth scaling.
  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const { zoom, panX, panY } = state.view;
    for (const im of state.images) {
      const cv = im.canvas;
      const cw = cv.clientWidth, ch = cv.clientHeight;
      const bw = Math.max(1, Math.round(cw * dpr)), bh = Math.max(1, Math.round(ch * dpr));
      if (cv.width !== bw || cv.height !== bh) { cv.width = bw; cv.height = bh; }
      const ctx = cv.getContext('2d');
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, bw, bh);
      if (!cw || !ch) continue;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      const s = Math.min(cw / im.w, ch / im.h) * zoom;
      const dw = im.w * s, dh = im.h * s;
      ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = 'high';
      ctx.drawImage(im.src, cw / 2 + panX - dw / 2, ch / 2 + panY - dh / 2, dw, dh);
    }
    Object.assign($('viewer').dataset, { zoom: String(zoom), panX: String(panX), panY: String(panY) });
  }

  function wireViewer() {
    const viewer = $('viewer');
    let drag = null;  // {mode: 'pan'|'wl', x0, y0, x, y, wl0, id, target}
    viewer.addEventListener('contextmenu', (e) => e.preventDefault());
    viewer.addEventListener('wheel', (e) => {
      if (!state.case || !(e.target instanceof HTMLCanvasElement)) return;
      e.preventDefault();
      const r = e.target.getBoundingClientRect();
      zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left - r.width / 2, e.clientY - r.top - r.height / 2);
    }, { passive: false });
    viewer.addEventListener('pointerdown', (e) => {
      if (!state.case || !(e.target instanceof HTMLCanvasElement) || drag) return;
      const mode = e.button === 2 || (e.button === 0 && e.shiftKey) ? 'wl' : e.button === 0 ? 'pan' : null;
      if (!mode) return;
      e.preventDefault();
      e.target.setPointerCapture(e.pointerId);
      drag = { mode, x0: e.clientX, y0: e.clientY, x: e.clientX, y: e.clientY, wl0: { ...state.wl }, id: e.pointerId };
      viewer.classList.add(mode === 'pan' ? 'panning' : 'windowing');
    });
    viewer.addEventListener('pointermove', (e) => {
      if (!drag || e.pointerId !== drag.id) return;
      if (drag.mode === 'pan') {
        state.view.panX += e.clientX - drag.x; state.view.panY += e.clientY - drag.y;
        scheduleDraw();
      } else {
        // horizontal = width, vertical = level (dragging up raises the level, like ArrowUp)
        setWindow(drag.wl0.width + (e.clientX - drag.x0), drag.wl0.level - (e.clientY - drag.y0));
      }
      drag.x = e.clientX; drag.y = e.clientY;
    });
    const end = (e) => {
      if (!drag || e.pointerId !== drag.id) return;
      drag = null; viewer.classList.remove('panning', 'windowing');
    };
    viewer.addEventListener('pointerup', end);
    viewer.addEventListener('pointercancel', end);
    new ResizeObserver(scheduleDraw).observe(viewer);
  }

  // ---------------------------------------------------------------- keyboard
  function isTextField(el) {
    if (!el) return false;
    if (el.isContentEditable || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT') return true;
    return el.tagName === 'INPUT' && !['radio', 'checkbox', 'button', 'submit', 'reset', 'range'].includes(el.type);
  }

  function toggleHelp(show) {
    const help = $('help');
    help.hidden = show === undefined ? !help.hidden : !show;
    $('help-toggle').setAttribute('aria-expanded', String(!help.hidden));
  }

  function onKey(e) {
    if ($('reader').hidden || e.ctrlKey || e.metaKey || e.altKey || isTextField(e.target)) return;
    const k = e.key;
    const handled = () => e.preventDefault();
    if (k === '?') { handled(); if (!e.repeat) toggleHelp(); return; }
    if (k === 'Escape') { toggleHelp(false); return; }
    if (k === 'Backspace') { handled(); if (!e.repeat) previous(); return; }
    if (!state.case) return;
    const map = CHOICE_KEYS[state.case.kind] || {};
    const lower = k.length === 1 ? k.toLowerCase() : k;
    if (map[lower]) { handled(); if (!e.repeat) choose(map[lower]); return; }
    if (/^[1-5]$/.test(k)) { handled(); if (!e.repeat && state.ratings.length) rate(state.active, Number(k)); return; }
    if (k === 'Enter') {
      // A focused helper button (Help, Sign out, Previous, Retry) keeps its own Enter.
      const a = document.activeElement;
      if (a && a.tagName === 'BUTTON' && !a.classList.contains('choice') && a.id !== 'submit') return;
      handled(); if (!e.repeat) submit(); return;
    }
    switch (k) {
      case '+': case '=': handled(); zoomAt(ZOOM_STEP); break;
      case '-': case '_': handled(); zoomAt(1 / ZOOM_STEP); break;
      case '0': handled(); resetView(); break;
      case 'ArrowUp': handled(); setWindow(state.wl.width, state.wl.level + 8); break;
      case 'ArrowDown': handled(); setWindow(state.wl.width, state.wl.level - 8); break;
      case 'ArrowRight': handled(); setWindow(state.wl.width + 16, state.wl.level); break;
      case 'ArrowLeft': handled(); setWindow(state.wl.width - 16, state.wl.level); break;
      default: break;
    }
  }

  // ---------------------------------------------------------------- boot
  // A "#token=" link: signs in at once (no question) — unless this page still holds an unsaved answer.
  function signInByLink(t) {
    if (t === DAMAGED) { showSignin(DAMAGED_LINK); return; }
    if (t !== state.token && (state.submitting || (state.session && readPending()))) {
      setStatus('Your answer is not saved yet: open the sign-in link again once it is saved.', 'warn');
      return;
    }
    store(TOKEN_KEY, t);
    start(t);
  }

  function boot() {
    $('signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const token = cleanToken($('token').value);
      if (token === null) { $('signin-error').textContent = DAMAGED_LINK; return; }
      if (!TOKEN_RE.test(token)) {
        $('signin-error').textContent = OWNER_RE.test(token)
          ? 'This is an owner key — use the owner page (/study/owner).'
          : 'This does not look like a reader token (study-id.r.secret).';
        return;
      }
      $('token').value = '';
      store(TOKEN_KEY, token);
      start(token);
    });
    $('signout').addEventListener('click', trySignOut);
    $('resume-switch').addEventListener('click', trySignOut);
    $('resume-continue').addEventListener('click', () => { if (state.token) start(state.token); });
    $('help-toggle').addEventListener('click', () => toggleHelp());
    $('submit').addEventListener('click', submit);
    $('previous').addEventListener('click', previous);
    $('done-previous').addEventListener('click', previous);
    $('retry').addEventListener('click', () => {
      const again = state.retry;
      if (!state.token || state.busy) return;
      state.retry = null; $('retry').hidden = true;
      (again || (() => start(state.token)))();
    });
    // The resume question: Enter continues wherever the focus is (a focused button keeps its own Enter).
    document.addEventListener('keydown', (e) => {
      if ($('resume').hidden) { onKey(e); return; }
      if (e.key !== 'Enter' || e.repeat || e.ctrlKey || e.metaKey || e.altKey) return;
      if (document.activeElement && document.activeElement.tagName === 'BUTTON') return;
      e.preventDefault();
      if (!$('resume-continue').disabled) $('resume-continue').click();
    });
    window.addEventListener('hashchange', () => {
      const t = takeHashToken();
      if (t) signInByLink(t);
    });
    wireViewer();

    const fromHash = takeHashToken();
    if (fromHash === DAMAGED) showSignin(DAMAGED_LINK);
    else if (fromHash) signInByLink(fromHash);
    else {
      const token = load(TOKEN_KEY);
      if (token && TOKEN_RE.test(token)) resume(token);
      else { if (token) store(TOKEN_KEY, null); showSignin(''); }
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
