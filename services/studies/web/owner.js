/* synthrad reader study — the owner page (served at /study/owner).
 *
 * Flow: owner key from the "#key=" hash (stored, then removed from the URL) or from sessionStorage
 *   (this tab only, gone with the browser session: the key opens every answer and adds readers)
 *   → GET /v1/studies/{sid} (facts + readers' progress) and GET …/results (statistics), rendered as tables
 *   → buttons: Refresh, Report (HTML), Export CSV / JSON (fetched with the header, saved as blobs),
 *     Add reader (POST …/readers; the new token and sign-in link are shown once).
 * Server strings are only ever written with textContent. No inline scripts/styles (strict CSP).
 */
'use strict';
(() => {
  const KEY_STORE = 'synthrad.study.owner';
  const KEY_RE = /^[a-z0-9][a-z0-9-]{0,39}\.o\.[A-Za-z0-9_-]+={0,2}$/;
  const MEASURES = [['uar', 'UAR'], ['car', 'CAR'], ['accuracy', 'Accuracy'], ['tpr', 'TPR'], ['tnr', 'TNR'],
    ['fir', 'FIR']];
  const DAMAGED_LINK = 'That sign-in link is damaged: paste the token instead';
  const NAME_MAX = 100;  // the server's limit (characters)
  const KIND_TITLES = { pair: 'Pair cases — which image is synthetic?', single: 'Single images — real or synthetic?' };

  const $ = (id) => document.getElementById(id);
  const state = { key: null, sid: null, study: null, readers: [], generation: 0 };

  // The owner key lives in sessionStorage only; one left in localStorage by an older page is deleted.
  function store(value) {
    try { if (value === null) sessionStorage.removeItem(KEY_STORE); else sessionStorage.setItem(KEY_STORE, value); }
    catch (e) { /* no persistence available */ }
  }
  function stored() { try { return sessionStorage.getItem(KEY_STORE); } catch (e) { return null; } }
  function forgetLegacyKey() { try { localStorage.removeItem(KEY_STORE); } catch (e) { /* nothing stored */ } }
  const decode = (text) => { try { return decodeURIComponent(text); } catch (e) { return null; } };

  /* A reader's display name as the server accepts it: 1-100 printable characters after trimming
   * (Python's str.isprintable: no control, format or separator characters other than the space). */
  function nameProblem(name) {
    if (!name) return 'Enter the reader’s name.';
    if ([...name].length > NAME_MAX) return `A reader name may have at most ${NAME_MAX} characters.`;
    if ([...name].some((ch) => ch !== ' ' && /[\p{C}\p{Z}]/u.test(ch))) {
      return 'A reader name may not contain control characters (tabs, line breaks and the like).';
    }
    return '';
  }

  // ---------------------------------------------------------------- network
  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; this.detail = detail; }
  }
  class Abandoned extends Error {}

  const { detailOf } = window.StudyCommon;  // common.js
  const base = () => `/v1/studies/${encodeURIComponent(state.sid)}`;

  /* One request with the bearer key. Returns the parsed JSON, or {blob, name} when `blob` is set
   * (name from Content-Disposition). 401 signs out; other errors raise ApiError with `detail`. */
  async function api(path, { method = 'GET', body, blob = false } = {}) {
    const gen = state.generation;
    let res;
    try {
      res = await fetch(path, {
        method, cache: 'no-store',
        headers: Object.assign({ Authorization: `Bearer ${state.key}` },
          body === undefined ? {} : { 'Content-Type': 'application/json' }),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) { throw new ApiError(0, 'Cannot reach the server — check the connection and try again.'); }
    if (gen !== state.generation) throw new Abandoned();
    if (!res.ok) {
      const data = await res.json().catch(() => ({}));
      if (gen !== state.generation) throw new Abandoned();
      if (res.status === 401) { signOut(detailOf(data, 401)); throw new Abandoned(); }
      throw new ApiError(res.status, detailOf(data, res.status));
    }
    if (!blob) return res.json();
    const cd = res.headers.get('Content-Disposition') || '';
    const m = cd.match(/filename\*=UTF-8''([^;]+)/i) || cd.match(/filename="?([^";]+)"?/i);
    return { blob: await res.blob(), name: m ? decode(m[1]) : null };
  }

  function setStatus(text, kind) {
    const el = $('owner-status');
    el.textContent = text || '';
    el.className = `status${kind ? ` ${kind}` : ''}`;
  }
  function report(e) {
    if (e instanceof Abandoned) return;
    setStatus(e instanceof ApiError ? e.detail : `Something went wrong: ${e && e.message}`, 'error');
  }

  // ---------------------------------------------------------------- sign-in / sign-out
  function showSignin(message) {
    $('owner').hidden = true;
    $('owner-signin').hidden = false;
    $('owner-error').textContent = message || '';
    $('owner-key').focus();
  }
  function signOut(message) {
    state.generation++;
    state.key = state.sid = state.study = null;
    store(null);
    $('new-reader').hidden = true;
    showSignin(message);
  }
  // "#key=…" → the key (removed from the URL); '' when the link is damaged (cannot be decoded).
  function takeHashKey() {
    const m = location.hash.match(/^#key=([^&]*)/);
    if (!m) return null;
    history.replaceState(null, '', location.pathname + location.search);
    const key = decode(m[1]);
    return key && KEY_RE.test(key.trim()) ? key.trim() : '';
  }
  async function start(key) {
    state.generation++;
    state.key = key;
    state.sid = key.split('.')[0];
    $('owner-signin').hidden = true;
    $('owner').hidden = false;
    await refresh();
  }

  // ---------------------------------------------------------------- loading
  async function refresh() {
    setStatus('Loading…');
    $('refresh').disabled = true;
    try {
      const s = await api(base());
      state.study = s.study;
      state.readers = s.readers || [];
      renderStudy(s.study);
      renderReaders(state.readers);
      setStatus(`Updated ${new Date().toLocaleTimeString()}.`);
    } catch (e) {
      if (e instanceof ApiError && !state.study && (e.status === 403 || e.status === 404)) signOut(e.detail);
      else report(e);
      return;
    } finally { $('refresh').disabled = false; }
    // The statistics come separately: an error there leaves the progress table usable.
    $('results-error').textContent = '';
    try { renderResults(await api(`${base()}/results`)); }
    catch (e) {
      if (e instanceof Abandoned) return;
      $('results-error').textContent = e instanceof ApiError ? e.detail : String(e);
    }
  }

  // ---------------------------------------------------------------- rendering helpers
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  const num = (v, digits) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '—');
  const raw = (v) => (v === null || v === undefined ? '' : String(v));  // full precision for data-value

  // An estimate E = {value, k, n, low, high} → "0.625 [0.31–0.86]"; title "k/n"; data-value raw.
  function estimateCell(E, measure) {
    const td = el('td', null, `num ${measure}`);
    if (!E || typeof E !== 'object') {
      td.textContent = typeof E === 'number' ? num(E, 3) : '—';
      td.dataset.value = typeof E === 'number' ? String(E) : '';
      return td;
    }
    let text = num(E.value, 3);
    if (typeof E.value === 'number' && typeof E.low === 'number' && typeof E.high === 'number') {
      text += ` [${num(E.low, 2)}–${num(E.high, 2)}]`;
    }
    td.textContent = text;
    td.dataset.value = raw(E.value);
    if (E.k !== null && E.k !== undefined && E.n !== null && E.n !== undefined) td.title = `${E.k}/${E.n}`;
    return td;
  }

  function fillBody(table, rows) {
    const tbody = table.tBodies[0];
    tbody.replaceChildren(...rows);
    if (!rows.length) {
      const tr = el('tr', null, 'empty');
      const td = el('td', 'Nothing yet.');
      td.colSpan = table.tHead ? table.tHead.rows[0].cells.length : 1;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
  }

  const when = (iso) => {
    if (!iso) return '—';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  };

  // ---------------------------------------------------------------- study and readers
  function renderStudy(st) {
    $('owner-title').textContent = st.title || st.id;
    document.title = `${st.title || st.id} — reader study owner`;
    const facts = [
      ['Study ID', st.id], ['Title', st.title], ['Created', when(st.created)], ['Seed', st.seed],
      ['Modes', Array.isArray(st.modes) ? st.modes.join(', ') : st.modes], ['Cases', st.n_cases],
      ['Image size', st.image_size ? `${st.image_size} px` : null], ['Likert questions', st.likert ? 'yes' : 'no'],
      ['Revising answers', st.allow_revise ? 'allowed' : 'not allowed'], ['Instructions', st.instructions],
    ];
    const dl = $('study-facts');
    dl.replaceChildren();
    for (const [k, v] of facts) {
      if (v === null || v === undefined || v === '') continue;
      dl.append(el('dt', k), el('dd', v));
    }
  }

  function renderReaders(readers) {
    fillBody($('readers'), readers.map((r) => {
      const tr = el('tr');
      tr.dataset.readerId = r.id;
      const bar = el('progress');
      bar.max = Math.max(1, r.total || 0);
      bar.value = r.answered || 0;
      bar.title = `${r.answered} of ${r.total}`;
      const cell = el('td');
      cell.appendChild(bar);
      tr.append(el('td', r.name, 'name'), el('td', r.id, 'mono'), el('td', `${r.answered} / ${r.total}`, 'num answered'),
        cell, el('td', when(r.last_answer_at), 'last'));
      tr.cells[2].dataset.value = raw(r.answered);
      return tr;
    }));
  }

  // ---------------------------------------------------------------- results
  function renderResults(res) {
    $('results-summary').textContent =
      `${res.n_answers} answers from ${res.n_readers} reader${res.n_readers === 1 ? '' : 's'}.`;
    const box = $('results');
    box.replaceChildren();
    for (const kind of res.kinds || []) box.appendChild(kindTable(kind));
    if (!(res.kinds || []).length) box.appendChild(el('p', 'No answers yet.', 'muted'));
    renderAgreement(res.agreement || []);
    renderLikert(res.likert || []);
    renderDefinitions(res.definitions);
  }

  // One table per case kind: Group | n | UAR | CAR | Accuracy | TPR | TNR | FIR.
  function kindTable(kind) {
    const table = el('table', null, 'data results');
    table.id = `results-${kind.kind}`;
    table.dataset.kind = kind.kind;
    table.appendChild(el('caption', KIND_TITLES[kind.kind] || kind.kind));
    const head = el('tr');
    for (const h of ['Group', 'n', ...MEASURES.map((m) => m[1])]) {
      const th = el('th', h);
      th.scope = 'col';
      head.appendChild(th);
    }
    table.createTHead().appendChild(head);
    const tbody = table.createTBody();
    for (const g of kind.groups || []) {
      const rates = g.rates || {};
      const tr = el('tr');
      tr.dataset.by = raw(g.by);
      tr.dataset.key = raw(g.key);
      const th = el('th', g.label || `${g.by}: ${g.key}`, 'group');
      th.scope = 'row';
      const n = el('td', raw(rates.n), 'num n');
      n.dataset.value = raw(rates.n);
      n.title = `undecided ${raw(rates.undecided)}, decided ${raw(rates.decided)}, correct ${raw(rates.correct)}`;
      tr.append(th, n, ...MEASURES.map(([m]) => estimateCell(rates[m], m)));
      tbody.appendChild(tr);
    }
    return table;
  }

  function renderAgreement(rows) {
    const nameOf = (id) => {
      const r = state.readers.find((x) => x.id === id);
      return r ? r.name : id;
    };
    fillBody($('agreement'), rows.map((a) => {
      const tr = el('tr');
      tr.dataset.kind = raw(a.kind);
      tr.dataset.method = raw(a.method);
      tr.append(el('td', a.kind), el('td', a.method), el('td', (a.readers || []).map(nameOf).join(', ')),
        el('td', a.n_cases, 'num n_cases'), estimateCell(a.kappa, 'kappa'));
      return tr;
    }));
  }

  function renderLikert(rows) {
    fillBody($('likert-summary'), rows.map((l) => {
      const tr = el('tr');
      tr.dataset.finding = raw(l.finding);
      tr.dataset.state = raw(l.state);
      tr.dataset.source = raw(l.source);
      const mean = estimateCell({ value: l.mean, low: l.mean_low, high: l.mean_high }, 'mean');
      mean.textContent = typeof l.mean === 'number'
        ? `${num(l.mean, 2)}${typeof l.mean_low === 'number' && typeof l.mean_high === 'number' ? ` [${num(l.mean_low, 2)}–${num(l.mean_high, 2)}]` : ''}`
        : '—';
      const median = el('td', typeof l.median === 'number' ? String(l.median) : '—', 'num median');
      median.dataset.value = raw(l.median);
      const counts = el('td', (l.counts || []).join(' / '), 'num counts');
      counts.dataset.value = (l.counts || []).join(',');
      tr.append(el('td', String(l.finding).replace(/_/g, ' ')), el('td', l.state), el('td', l.source),
        el('td', l.n, 'num n'), mean, median, counts, estimateCell(l.consistent, 'consistent'));
      return tr;
    }));
  }

  // `definitions` may be a mapping name → text (or → object), a list, or a string: show what is there.
  function renderDefinitions(defs) {
    const dl = $('definitions');
    dl.replaceChildren();
    const text = (v) => (typeof v === 'string' ? v : JSON.stringify(v));
    if (!defs) { $('definitions-box').hidden = true; return; }
    $('definitions-box').hidden = false;
    if (typeof defs === 'string') dl.append(el('dd', defs));
    else if (Array.isArray(defs)) {
      for (const d of defs) {
        if (d && typeof d === 'object') dl.append(el('dt', d.name || d.key || d.measure || ''), el('dd', d.text || d.definition || text(d)));
        else dl.append(el('dd', text(d)));
      }
    } else for (const [k, v] of Object.entries(defs)) dl.append(el('dt', k), el('dd', text(v)));
  }

  // ---------------------------------------------------------------- downloads
  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement('a');
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  async function fetchAndSave(button, path, fallbackName) {
    button.disabled = true;
    setStatus('Preparing the download…');
    try {
      const { blob, name } = await api(path, { blob: true });
      saveBlob(blob, name || fallbackName);
      setStatus('Downloaded.');
    } catch (e) { report(e); }
    finally { button.disabled = false; }
  }

  async function copy(text, button) {
    try { await navigator.clipboard.writeText(text); }
    catch (e) {
      // Insecure contexts have no clipboard API: fall back to a selected temporary textarea.
      const ta = el('textarea');
      ta.value = text;
      document.body.appendChild(ta);
      ta.select();
      document.execCommand('copy');
      ta.remove();
    }
    button.textContent = 'Copied';
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  }

  // ---------------------------------------------------------------- boot
  function boot() {
    $('owner-form').addEventListener('submit', (e) => {
      e.preventDefault();
      let key = $('owner-key').value.trim();
      const m = key.match(/#key=([^&\s]*)/);
      if (m) key = decode(m[1]);
      if (key === null) { $('owner-error').textContent = DAMAGED_LINK; return; }
      key = key.trim();
      if (!KEY_RE.test(key)) {
        $('owner-error').textContent = /\.r\./.test(key)
          ? 'This is a reader token — readers sign in on /study/.'
          : 'This does not look like an owner key (study-id.o.secret).';
        return;
      }
      $('owner-key').value = '';
      store(key);
      start(key);
    });
    $('owner-signout').addEventListener('click', () => signOut(''));
    $('refresh').addEventListener('click', refresh);
    $('report-html').addEventListener('click', (e) =>
      fetchAndSave(e.currentTarget, `${base()}/report`, `${state.sid}-report.html`));
    $('export-csv').addEventListener('click', (e) =>
      fetchAndSave(e.currentTarget, `${base()}/export?format=csv`, `${state.sid}-answers.csv`));
    $('export-json').addEventListener('click', (e) =>
      fetchAndSave(e.currentTarget, `${base()}/export?format=json`, `${state.sid}-answers.json`));
    $('add-reader-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const name = $('reader-name').value.trim();
      const problem = nameProblem(name);
      if (problem) { setStatus(problem, 'warn'); $('reader-name').focus(); return; }
      $('add-reader').disabled = true;
      try {
        const r = await api(`${base()}/readers`, { method: 'POST', body: { name } });
        const link = `${location.origin}/study/#token=${r.token}`;
        $('new-reader-name').textContent = r.reader.name;
        $('new-reader-token').textContent = r.token;
        $('new-reader-link').textContent = link;
        $('new-reader').hidden = false;
        $('reader-name').value = '';
        setStatus(`Reader ${r.reader.name} added.`);
        const s = await api(base());
        state.readers = s.readers || [];
        renderReaders(state.readers);
      } catch (err) { report(err); }
      finally { $('add-reader').disabled = false; }
    });
    $('copy-token').addEventListener('click', (e) => copy($('new-reader-token').textContent, e.currentTarget));
    $('copy-link').addEventListener('click', (e) => copy($('new-reader-link').textContent, e.currentTarget));
    window.addEventListener('hashchange', () => {
      const k = takeHashKey();
      if (k === '') showSignin(DAMAGED_LINK);
      else if (k) { store(k); start(k); }
    });

    forgetLegacyKey();
    const fromHash = takeHashKey();
    if (fromHash === '') { showSignin(DAMAGED_LINK); return; }
    if (fromHash) store(fromHash);
    const key = fromHash || stored();
    if (key) start(key); else showSignin('');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
