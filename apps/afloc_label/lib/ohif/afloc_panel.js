/*
 * The AFLoc panel for the OHIF v3 viewer bundled in monailabel 0.8.5.
 *
 * lib/ohif_static.py appends this file (after ohif_afloc_mode.js) to the bundle's app-config.js.
 * It registers an OHIF extension "afloc-label" with one panel ("AFLoc"), which the AFLoc (X-ray)
 * mode shows first on the right. The panel is plain DOM: its React component renders one empty
 * <div> whose ref callback moves the panel's own element into it (the bundle does not expose
 * React to outside code, so the element is created the way React's JSX runtime creates one).
 *
 * What the panel does, all on the image in the active viewport:
 * - a prompt box with the focus: Enter runs, `;` or a new line (Shift+Enter) separates prompts;
 *   quick picks of common findings; the findings of the study's report as one-click prompts
 *   (GET /afloc/findings?image=<series>: the report of the image info, read by the server's
 *   negation-aware reader; a server without that route: the `report` of
 *   GET /datastore/image/info, read here by reportFindings);
 * - POST /infer/afloc (output=json), then each prompt's float heatmap from the datastore
 *   (float32 NIfTI on the image's grid, values in [-1, 1]);
 * - an overlay canvas over the cornerstone viewport: the chosen prompt's heatmap in colour
 *   (legend and opacity in the panel) and every prompt's segment outlined in its own colour
 *   and named after the prompt; redrawn when the view pans/zooms;
 * - a threshold slider: masks are recomputed in the browser with the server's rule
 *   (afloc_models/inference/heatmap.py threshold_mask: heat >= threshold, compared in float32;
 *   a negated prompt has no mask; afloc_training/draft.py combine_masks, used by the infer task:
 *   where masks overlap the prompt with the higher heat wins, the first on ties);
 * - Accept / Keep draft: POST /afloc/segments with the ticked segments (lib/ohif_segments.py
 *   stores a DICOM-SEG in the PACS; a draft also under the datastore tag afloc_draft);
 * - errors of any step as a message in the panel;
 * - sign-in for a server with authentication on (MONAI_LABEL_AUTH_ENABLE): every request of the
 *   panel carries `Authorization: Bearer <token>`: the token of this tab's sign-in (the panel's
 *   "Server sign-in": user name and password -> POST /auth/token, or a pasted token; the same
 *   one as the viewer's sign-in form, lib/ohif/afloc_sign_in.js), kept in sessionStorage, else
 *   the viewer's own (OHIF's userAuthenticationService, e.g. its OpenID Connect login); a 401
 *   says "sign in" or "token rejected" and opens the sign-in section.
 *
 * Test hook: window.__aflocPanel.
 */
(function () {
  'use strict';

  var EXTENSION_ID = 'afloc-label';
  var PANEL_NAME = 'afloc';
  var ASSET_PREFIX = '_afloc/';
  var MAX_PROMPTS = 8;
  // Segment colours, the same order as lib/label_io.py SEGMENT_COLORS (0..1 there).
  var SEGMENT_COLORS = [
    [242, 77, 64], [51, 166, 242], [89, 217, 89], [250, 204, 51],
    [204, 102, 230], [26, 217, 204], [250, 140, 26], [242, 115, 179],
  ];
  var QUICK_PICKS = [
    'pleural effusion', 'pneumothorax', 'cardiomegaly', 'consolidation',
    'atelectasis', 'pulmonary edema', 'nodule', 'opacity',
  ];
  // Words that name a finding in a report sentence (matched as whole words, lower case).
  var FINDING_WORDS = [
    'effusion', 'effusions', 'pneumothorax', 'cardiomegaly', 'consolidation', 'atelectasis',
    'edema', 'oedema', 'nodule', 'nodules', 'mass', 'opacity', 'opacities', 'opacification',
    'infiltrate', 'infiltrates', 'pneumonia', 'fracture', 'emphysema', 'fibrosis', 'scarring',
    'hernia', 'thickening', 'calcification', 'lesion', 'enlarged', 'enlargement', 'congestion',
  ];
  var NEGATION = /\b(no|not|without|negative for|free of|resolved|absence of|absent|clear of|removed)\b/;
  var OUTLINE_PX = 2;
  var DEFAULT_OPACITY = 0.5;
  var REACT_ELEMENT = typeof Symbol === 'function' ? Symbol.for('react.element') : 0xeac7;
  // sessionStorage key of the panel's sign-in token (this tab only; gone when it closes).
  var TOKEN_KEY = 'afloc-label.access-token';

  // ------------------------------------------------------------------ pure helpers (tested)

  /** Split the prompt box's text into prompts: `;` and new lines separate, blanks dropped. */
  // How the server read the maps (the reply's `reading`), as the Slicer module says it
  // (slicer_extension/AFLoc/AFLocLib/client.py, READING_*_NOTES); '' when the server says nothing.
  var READING_MIRROR_NOTES = {
    on: 'Maps: mean of the image and its mirror.',
    sides: 'Maps: a prompt that names a side is the mean of the image and its mirror.',
  };
  var READING_REFINE_NOTES = { guided: "Heat follows the image's edges (guided filter)." };

  function readingNote(reading) {
    if (!reading || typeof reading !== 'object') return '';
    var notes = [READING_MIRROR_NOTES[reading.mirror], READING_REFINE_NOTES[reading.refine]].filter(Boolean);
    return notes.length ? ' ' + notes.join(' ') : '';
  }

  function splitPrompts(text) {
    return String(text || '')
      .split(/[;\n]/)
      .map(function (p) { return p.replace(/\s+/g, ' ').trim(); })
      .filter(Boolean);
  }

  /** Findings stated (not negated) in a report, as short prompts, in report order, unique. */
  function reportFindings(report) {
    var text = typeof report === 'string' ? report : report && (report.text || report.findings || '');
    if (!text) return [];
    var seen = {};
    var out = [];
    String(text)
      .split(/[.\n;]|,\s*(?=and\b)/)
      .forEach(function (sentence) {
        var s = sentence.replace(/\s+/g, ' ').trim().toLowerCase().replace(/^[-*\d.)\s]+/, '');
        if (!s || /^(findings|impression|impressions|history|indication|comparison|technique)\s*:?\s*$/.test(s)) return;
        s = s.replace(/^(findings|impression|impressions)\s*:\s*/, '');
        var words = s.match(/[a-z]+/g) || [];
        var hit = -1;
        for (var i = 0; i < words.length; i++) {
          if (FINDING_WORDS.indexOf(words[i]) !== -1) { hit = i; break; }
        }
        if (hit === -1) return;
        if (NEGATION.test(s.slice(0, s.indexOf(words[hit])))) return;
        var prompt = s.replace(/[^a-z0-9 \-/]/g, ' ').replace(/\s+/g, ' ').trim();
        if (prompt.length > 80) prompt = words.slice(Math.max(0, hit - 4), hit + 2).join(' ');
        if (!seen[prompt]) {
          seen[prompt] = true;
          out.push(prompt);
        }
      });
    return out.slice(0, 12);
  }

  /** A float32 NIfTI-1 file (little or big endian) -> {width, height, data: Float32Array}. */
  function parseNifti(buffer) {
    var view = new DataView(buffer);
    var little = view.getInt32(0, true) === 348;
    if (!little && view.getInt32(0, false) !== 348) throw new Error('the heatmap is not a NIfTI-1 file');
    var dims = [];
    for (var i = 0; i < 8; i++) dims.push(view.getInt16(40 + 2 * i, little));
    var datatype = view.getInt16(70, little);
    if (datatype !== 16) throw new Error('the heatmap is NIfTI datatype ' + datatype + ', expected float32 (16)');
    var offset = Math.round(view.getFloat32(108, little));
    var width = dims[1];
    var height = dims[0] >= 2 ? dims[2] : 1;
    var count = width * height;
    if (offset + 4 * count > buffer.byteLength) throw new Error('the heatmap file is truncated');
    var data = new Float32Array(count);
    if (little && offset % 4 === 0) {
      data.set(new Float32Array(buffer, offset, count));
    } else {
      for (var k = 0; k < count; k++) data[k] = view.getFloat32(offset + 4 * k, little);
    }
    return { width: width, height: height, data: data };
  }

  /**
   * The server's label at `threshold`: value i + 1 where prompt i's heat >= threshold (float32
   * comparison) and is the highest among the prompts whose mask covers the pixel (first on ties).
   * `chosen[i]` false leaves prompt i out; a negated prompt never has a mask.
   */
  function combinedLabel(prompts, threshold, chosen) {
    var t = Math.fround(threshold);
    var n = prompts[0].heat.data.length;
    var label = new Uint8Array(n);
    var active = [];
    prompts.forEach(function (p, i) {
      if (!p.negated && (!chosen || chosen[i])) active.push(i);
    });
    for (var k = 0; k < n; k++) {
      var best = -1;
      var bestHeat = 0;
      for (var a = 0; a < active.length; a++) {
        var h = prompts[active[a]].heat.data[k];
        if (h >= t && (best === -1 || h > bestHeat)) {
          best = active[a];
          bestHeat = h;
        }
      }
      label[k] = best + 1;
    }
    return label;
  }

  /** FNV-1a (32 bit) of a byte array (the e2e test compares it with the server's label). */
  function fnv1a(bytes) {
    var hash = 0x811c9dc5;
    for (var i = 0; i < bytes.length; i++) hash = Math.imul(hash ^ bytes[i], 0x01000193) >>> 0;
    return hash;
  }

  /** Colour map of the heatmap overlay: 256 RGB entries from -1 (blue) to +1 (red), "jet". */
  function colormap() {
    var lut = new Uint8Array(256 * 3);
    for (var i = 0; i < 256; i++) {
      var x = i / 255;
      lut[3 * i] = Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * x - 3))));
      lut[3 * i + 1] = Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * x - 2))));
      lut[3 * i + 2] = Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * x - 1))));
    }
    return lut;
  }
  var LUT = colormap();

  function heatIndex(h) {
    var i = Math.round((h + 1) * 127.5);
    return i < 0 ? 0 : i > 255 ? 255 : i;
  }

  // ------------------------------------------------------------------ panel state

  var state = {
    services: null,
    cornerstone: null,
    root: null,
    els: {},
    series: null, // {seriesUID, studyUID, modality, viewportId}
    result: null, // {reply, prompts: [{text, negated, heat, color, value, score, probability}], width, height}
    threshold: 0.3,
    opacity: DEFAULT_OPACITY,
    heatmapIndex: 0,
    chosen: [],
    overlay: null, // {canvas, element, listener}
    busy: false,
    lastSave: null,
    lastError: null,
    drawCount: 0,
  };

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === 'text') node.textContent = attrs[key];
      else if (key === 'className') node.className = attrs[key];
      else if (key.slice(0, 2) === 'on') node.addEventListener(key.slice(2), attrs[key]);
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function loadStyles() {
    if (document.getElementById('afloc-panel-css')) return;
    var link = document.createElement('link');
    link.id = 'afloc-panel-css';
    link.rel = 'stylesheet';
    link.href = (window.PUBLIC_URL || '/ohif/') + ASSET_PREFIX + 'afloc_panel.css';
    document.head.appendChild(link);
  }

  function buildPanel() {
    var e = state.els;
    e.prompt = el('textarea', {
      id: 'afloc-prompt', rows: '2', 'aria-label': 'Findings to localize',
      placeholder: 'Type a finding, Enter to run (; or Shift+Enter for more)',
      onkeydown: function (event) {
        if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          run();
        }
        event.stopPropagation(); // keep the viewer's hotkeys out of the text box
      },
    });
    e.run = el('button', { id: 'afloc-run', className: 'afloc-btn afloc-primary', text: 'Localize', onclick: function () { run(); } });
    e.quick = el('div', { id: 'afloc-quick', className: 'afloc-chips' });
    QUICK_PICKS.forEach(function (finding) {
      e.quick.appendChild(el('button', { className: 'afloc-chip', text: finding, onclick: function () { addPromptAndRun(finding); } }));
    });
    e.report = el('div', { id: 'afloc-report', className: 'afloc-chips' });
    e.reportText = el('details', { id: 'afloc-report-text', className: 'afloc-report-text' });
    e.message = el('div', { id: 'afloc-message', className: 'afloc-message', role: 'status', 'aria-live': 'polite' });
    e.threshold = el('input', {
      id: 'afloc-threshold', type: 'range', min: '-1', max: '1', step: '0.01', value: String(state.threshold),
      'aria-label': 'Mask threshold', oninput: function () { setThreshold(Number(e.threshold.value)); },
    });
    e.thresholdValue = el('span', { id: 'afloc-threshold-value', text: state.threshold.toFixed(2) });
    e.opacity = el('input', {
      id: 'afloc-opacity', type: 'range', min: '0', max: '1', step: '0.05', value: String(state.opacity),
      'aria-label': 'Heatmap opacity', oninput: function () { state.opacity = Number(e.opacity.value); e.opacityValue.textContent = Math.round(state.opacity * 100) + '%'; draw(); },
    });
    e.opacityValue = el('span', { id: 'afloc-opacity-value', text: Math.round(state.opacity * 100) + '%' });
    e.legend = el('canvas', { id: 'afloc-legend', width: '240', height: '26', 'aria-label': 'Heatmap colour legend' });
    e.segments = el('div', { id: 'afloc-segments', className: 'afloc-segments' });
    e.accept = el('button', { id: 'afloc-accept', className: 'afloc-btn afloc-primary', text: 'Accept', disabled: 'disabled', onclick: function () { save('final'); } });
    e.draft = el('button', { id: 'afloc-draft', className: 'afloc-btn', text: 'Keep draft', disabled: 'disabled', onclick: function () { save('draft'); } });
    e.stored = el('div', { id: 'afloc-stored', className: 'afloc-stored' });
    e.image = el('div', { id: 'afloc-image', className: 'afloc-muted' });
    var authKeys = function (event) {
      if (event.key === 'Enter') {
        event.preventDefault();
        signInFromPanel();
      }
      event.stopPropagation();
    };
    e.authSummary = el('summary', { id: 'afloc-auth-summary', text: 'Server sign-in' });
    e.authStatus = el('div', { id: 'afloc-auth-status', className: 'afloc-auth-status afloc-muted' });
    e.authUser = el('input', { id: 'afloc-auth-user', type: 'text', autocomplete: 'username', placeholder: 'user name', 'aria-label': 'User name', onkeydown: authKeys });
    e.authPassword = el('input', { id: 'afloc-auth-password', type: 'password', autocomplete: 'current-password', placeholder: 'password', 'aria-label': 'Password', onkeydown: authKeys });
    e.authToken = el('input', { id: 'afloc-auth-token', type: 'password', autocomplete: 'off', placeholder: 'or paste an access token', 'aria-label': 'Access token', onkeydown: authKeys });
    e.signIn = el('button', { id: 'afloc-sign-in', className: 'afloc-btn afloc-primary', text: 'Sign in', onclick: function () { signInFromPanel(); } });
    e.signOut = el('button', { id: 'afloc-sign-out', className: 'afloc-btn', text: 'Sign out', disabled: 'disabled', onclick: signOut });
    e.auth = el('details', { id: 'afloc-auth', className: 'afloc-auth' }, [
      e.authSummary,
      e.authStatus,
      el('div', { className: 'afloc-auth-fields' }, [e.authUser, e.authPassword, e.authToken]),
      el('div', { className: 'afloc-row afloc-buttons' }, [e.signOut, e.signIn]),
    ]);
    e.model = el('div', { id: 'afloc-model', className: 'afloc-muted' });

    state.root = el('div', { id: 'afloc-panel', className: 'afloc-panel' }, [
      el('div', { className: 'afloc-title', text: 'AFLoc: localize findings' }),
      e.model,
      e.image,
      el('div', { className: 'afloc-row' }, [e.prompt]),
      el('div', { className: 'afloc-row afloc-right' }, [e.run]),
      e.message,
      el('div', { className: 'afloc-section', text: 'Common findings' }),
      e.quick,
      el('div', { className: 'afloc-section', text: 'From the report' }),
      e.report,
      e.reportText,
      el('div', { className: 'afloc-section', text: 'Heatmap' }),
      e.legend,
      el('label', { className: 'afloc-slider' }, [el('span', { text: 'Opacity' }), e.opacity, e.opacityValue]),
      el('label', { className: 'afloc-slider' }, [el('span', { text: 'Threshold' }), e.threshold, e.thresholdValue]),
      el('div', { className: 'afloc-section', text: 'Segments' }),
      e.segments,
      el('div', { className: 'afloc-row afloc-buttons' }, [e.draft, e.accept]),
      el('div', { className: 'afloc-section', text: 'Stored for this study' }),
      e.stored,
      e.auth,
    ]);
    drawLegend();
    renderAuth();
    renderReport(null);
  }

  function attachTo(container) {
    if (!container) return;
    if (!state.root) buildPanel();
    loadStyles();
    container.appendChild(state.root);
    setTimeout(function () { state.els.prompt.focus(); }, 0);
    refreshSeries();
    showModel();
  }

  // What the served model was trained on, from the checkpoint's own metadata (GET /info/).
  async function showModel() {
    var line = state.els.model;
    try {
      var info = await (await request('/info/', {}, 'reading the server info')).json();
      var model = (info.models && info.models.afloc) || {};
      var trainedOn = model.trained_on || info.trained_on || 'unknown';
      line.textContent = 'Model ' + (info.version || '') + ', trained on: ' + trainedOn;
    } catch (error) {
      line.textContent = 'Model: unknown (' + (error.message || error) + ')';
    }
  }

  // React element for the panel component (a <div> that receives the panel's DOM).
  function PanelComponent() {
    return { $$typeof: REACT_ELEMENT, type: 'div', key: null, ref: attachTo, props: { className: 'afloc-panel-host' }, _owner: null, _store: {} };
  }

  // ------------------------------------------------------------------ messages

  function setMessage(text, kind) {
    var m = state.els.message;
    if (!m) return;
    m.textContent = text || '';
    m.className = 'afloc-message' + (kind ? ' afloc-' + kind : '');
    m.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    if (kind === 'error') state.lastError = text;
  }

  // ------------------------------------------------------------------ sign-in (auth on)

  var auth = { token: null, user: null };

  function tokenStore() {
    try {
      return window.sessionStorage || null;
    } catch (error) {
      return null; // storage blocked: the token lives in this page only
    }
  }

  function loadToken() {
    var store = tokenStore();
    if (!auth.token && store) auth.token = store.getItem(TOKEN_KEY) || null;
    if (!auth.user && store) auth.user = store.getItem(TOKEN_KEY + '.user') || null;
  }

  /** Keep `token` (and the user name it stands for) for this tab; null signs out. */
  function setToken(token, user) {
    auth.token = token || null;
    auth.user = token ? user || null : null;
    var store = tokenStore();
    if (store) {
      if (auth.token) {
        store.setItem(TOKEN_KEY, auth.token);
        store.setItem(TOKEN_KEY + '.user', auth.user || '');
      } else {
        store.removeItem(TOKEN_KEY);
        store.removeItem(TOKEN_KEY + '.user');
      }
    }
    renderAuth();
  }

  /**
   * The Authorization header for the server and where it comes from: the token of this tab's
   * sign-in (the panel's "Server sign-in" or the viewer's sign-in form, lib/ohif/afloc_sign_in.js),
   * else the viewer's own (OHIF's userAuthenticationService, e.g. its OpenID Connect login);
   * null when neither has one.
   */
  function authHeader() {
    loadToken();
    if (auth.token) return { value: 'Bearer ' + auth.token, source: 'panel' };
    var service = state.services && state.services.userAuthenticationService;
    try {
      var viewer = service && service.getAuthorizationHeader && service.getAuthorizationHeader();
      if (viewer && viewer.Authorization) return { value: viewer.Authorization, source: 'viewer' };
    } catch (error) {
      // the viewer has no sign-in of its own
    }
    return null;
  }

  /** fetch() with the sign-in header; `reply.aflocSentToken` says whether one was sent. */
  async function send(url, options) {
    var opts = Object.assign({}, options || {});
    var headers = new Headers(opts.headers || {});
    var header = authHeader();
    if (header && !headers.has('Authorization')) headers.set('Authorization', header.value);
    opts.headers = headers;
    var reply = await fetch(url, opts);
    reply.aflocSentToken = !!header;
    return reply;
  }

  /**
   * Sign in to the server: `{username, password}` (POST /auth/token) or `{token}` (pasted).
   * The token is checked with GET /auth/token/valid, then kept; resolves to {user}.
   */
  async function signInWith(credentials) {
    var token = credentials.token ? String(credentials.token).trim().replace(/^Bearer\s+/i, '') : '';
    if (!token) {
      if (!credentials.username || !credentials.password) throw new Error('enter a user name and a password, or paste an access token');
      var form = new URLSearchParams();
      form.set('username', credentials.username);
      form.set('password', credentials.password);
      var reply;
      try {
        reply = await fetch('/auth/token', { method: 'POST', body: form });
      } catch (error) {
        throw new Error('Cannot reach the AFLoc server (signing in): is it running? (' + (error.message || error) + ')');
      }
      if (!reply.ok) throw new Error(await replyError(reply, 'signing in', false, true));
      token = ((await reply.json()) || {}).access_token;
      if (!token) throw new Error('the server answered the sign-in without a token');
    }
    var check = await fetch('/auth/token/valid', { headers: { Authorization: 'Bearer ' + token } });
    if (!check.ok) throw new Error(await replyError(check, 'checking the token', true, true));
    var who = await check.json().catch(function () { return {}; });
    var user = (who && (who.username || who.name || who.email)) || credentials.username || 'token';
    setToken(token, user);
    return { user: user };
  }

  function renderAuth(note, isError) {
    var e = state.els;
    if (!e.authSummary) return;
    loadToken();
    var header = authHeader();
    var viewer = header && header.source === 'viewer';
    e.authSummary.textContent = 'Server sign-in: ' + (viewer ? 'the viewer\'s' : auth.token ? auth.user || 'token' : 'not signed in');
    e.authStatus.textContent = note || (viewer
      ? 'Requests carry the viewer\'s own sign-in.'
      : auth.token ? 'Signed in as ' + (auth.user || 'a pasted token') + ' (this tab only).' : 'Only needed when the server asks for it.');
    e.authStatus.className = isError ? 'afloc-auth-status afloc-error-text' : 'afloc-auth-status afloc-muted';
    if (auth.token) e.signOut.removeAttribute('disabled');
    else e.signOut.setAttribute('disabled', 'disabled');
  }

  /** A 401 arrived: open the sign-in section and say why. */
  function signInNeeded(rejected) {
    var e = state.els;
    if (!e.auth) return;
    e.auth.open = true;
    renderAuth(rejected ? 'The server rejected the token: sign in again.' : 'The server asks you to sign in.', true);
  }

  async function signInFromPanel() {
    var e = state.els;
    var credentials = { username: e.authUser.value.trim(), password: e.authPassword.value, token: e.authToken.value.trim() };
    renderAuth('Signing in...');
    try {
      var who = await signInWith(credentials);
      e.authPassword.value = '';
      e.authToken.value = '';
      renderAuth();
      setMessage('Signed in as ' + who.user + '.', 'ok');
      showModel();
      if (state.series) {
        loadReport();
        loadStored();
      }
      e.prompt.focus();
    } catch (error) {
      // The password and a refused token are not kept (the next try starts from the user name).
      e.authPassword.value = '';
      e.authToken.value = '';
      renderAuth('Sign-in failed: ' + (error.message || error), true);
      setMessage('Sign-in failed: ' + (error.message || error), 'error');
    }
  }

  function signOut() {
    setToken(null);
    setMessage('Signed out: the panel sends no token.', 'ok');
  }

  async function replyError(reply, what, sentToken, signingIn) {
    var detail = '';
    try {
      var body = await reply.json();
      detail = body && (body.detail || body.error || '');
      if (typeof detail !== 'string') detail = JSON.stringify(detail);
    } catch (error) {
      detail = reply.statusText || '';
    }
    if (reply.status === 401) {
      if (signingIn) return 'Sign-in refused (' + what + '): ' + (detail || 'HTTP 401');
      if (sentToken) return 'The AFLoc server rejected your sign-in token (' + what + '): ' + (detail || 'HTTP 401') + '. Sign in again under "Server sign-in".';
      return 'The AFLoc server asks you to sign in (' + what + '): enter your user name and password (or paste an access token) under "Server sign-in".';
    }
    if (reply.status === 503) return 'The AFLoc model is not available: ' + detail;
    if (reply.status === 404 && /model/i.test(detail)) return 'The server has no AFLoc model: ' + detail;
    if (reply.status >= 400 && reply.status < 500) return 'The server refused (' + what + '): ' + (detail || 'HTTP ' + reply.status);
    return what.charAt(0).toUpperCase() + what.slice(1) + ' failed on the server (HTTP ' + reply.status + ')' + (detail ? ': ' + detail : '');
  }

  /** fetch() with the sign-in header; a refused or failed request throws a message for the panel. */
  async function request(url, options, what) {
    var reply;
    try {
      reply = await send(url, options);
    } catch (error) {
      throw new Error('Cannot reach the AFLoc server (' + what + '): is it running? (' + (error.message || error) + ')');
    }
    if (!reply.ok) {
      if (reply.status === 401) signInNeeded(reply.aflocSentToken);
      throw new Error(await replyError(reply, what, reply.aflocSentToken));
    }
    return reply;
  }

  // ------------------------------------------------------------------ the image on screen

  function activeViewport() {
    var s = state.services;
    if (!s) return null;
    var grid = s.viewportGridService.getState();
    var id = grid.activeViewportId;
    var vpState = grid.viewports && (grid.viewports.get ? grid.viewports.get(id) : grid.viewports[id]);
    if (!vpState || !vpState.displaySetInstanceUIDs || !vpState.displaySetInstanceUIDs.length) return null;
    var displaySet = s.displaySetService.getDisplaySetByUID(vpState.displaySetInstanceUIDs[0]);
    if (!displaySet) return null;
    var csViewport = s.cornerstoneViewportService.getCornerstoneViewport(id);
    return {
      viewportId: id,
      seriesUID: displaySet.SeriesInstanceUID,
      studyUID: displaySet.StudyInstanceUID,
      modality: displaySet.Modality,
      description: displaySet.SeriesDescription || '',
      csViewport: csViewport || null,
    };
  }

  function refreshSeries() {
    var current = activeViewport();
    if (!current || !current.seriesUID) return;
    if (state.series && state.series.seriesUID === current.seriesUID) return;
    state.series = current;
    state.result = null;
    state.lastSave = null;
    state.els.image.textContent = (current.modality || '') + ' series ' + current.seriesUID.slice(-12) + (current.description ? ' (' + current.description + ')' : '');
    renderSegments();
    removeOverlay();
    loadReport();
    loadStored();
  }

  async function loadReport() {
    var series = state.series;
    renderReport(null, 'Looking for a report...');
    try {
      // The server reads the report's findings (negations left out); older servers: the report
      // from the image info, read here.
      var reply = await send('/afloc/findings?image=' + encodeURIComponent(series.seriesUID));
      var body;
      if (reply.status === 404) {
        reply = await request('/datastore/image/info?image=' + encodeURIComponent(series.seriesUID), {}, 'reading the report');
        var info = await reply.json();
        body = { report: info && info.report ? info.report : null, findings: null };
      } else if (!reply.ok) {
        if (reply.status === 401) signInNeeded(reply.aflocSentToken);
        throw new Error(await replyError(reply, 'reading the report', reply.aflocSentToken));
      } else {
        body = await reply.json();
      }
      if (state.series !== series) return;
      var findings = body.findings ? body.findings.map(function (f) { return { prompt: f.prompt, uncertain: f.certainty === 'uncertain', sentence: f.sentence }; }) : null;
      renderReport(body.report || null, null, findings);
    } catch (error) {
      if (state.series === series) renderReport(null, 'No report (' + error.message + ')');
    }
  }

  function renderReport(report, note, serverFindings) {
    var e = state.els;
    e.report.textContent = '';
    e.reportText.textContent = '';
    var found = serverFindings || reportFindings(report).map(function (p) { return { prompt: p, uncertain: false, sentence: '' }; });
    var findings = found.map(function (f) { return f.prompt; });
    state.reportFindings = findings;
    if (!report) {
      e.report.appendChild(el('span', { className: 'afloc-muted', text: note || 'No report for this image.' }));
      return;
    }
    if (!findings.length) e.report.appendChild(el('span', { className: 'afloc-muted', text: 'The report names no finding to localize.' }));
    found.forEach(function (f) {
      var title = 'Localize "' + f.prompt + '"' + (f.sentence ? ' (report: ' + f.sentence + ')' : '');
      e.report.appendChild(el('button', {
        className: 'afloc-chip afloc-report-chip' + (f.uncertain ? ' afloc-uncertain' : ''),
        text: f.prompt + (f.uncertain ? ' ?' : ''),
        title: title + (f.uncertain ? ' - stated as uncertain' : ''),
        onclick: function () { addPromptAndRun(f.prompt); },
      }));
    });
    var text = typeof report === 'string' ? report : report.text || JSON.stringify(report);
    e.reportText.appendChild(el('summary', { text: 'Report' }));
    e.reportText.appendChild(el('p', { text: text }));
  }

  async function loadStored() {
    var series = state.series;
    var e = state.els;
    try {
      var url = '/proxy/dicom/qido/studies/' + encodeURIComponent(series.studyUID) + '/series?Modality=SEG&includefield=0008103E';
      var reply = await request(url, { headers: { Accept: 'application/dicom+json' } }, 'listing stored segmentations');
      var text = await reply.text();
      var items = text ? JSON.parse(text) : [];
      if (state.series !== series) return;
      e.stored.textContent = '';
      var rows = items
        .map(function (item) {
          var d = item['0008103E'];
          return { description: d && d.Value ? d.Value[0] : '', uid: item['0020000E'] && item['0020000E'].Value[0] };
        })
        .filter(function (row) { return /^AFLoc\b/.test(row.description); });
      state.storedSeries = rows;
      if (!rows.length) e.stored.appendChild(el('span', { className: 'afloc-muted', text: 'No AFLoc segmentation stored yet.' }));
      rows.forEach(function (row) {
        var draft = /^AFLoc draft\b/.test(row.description);
        e.stored.appendChild(el('div', { className: 'afloc-stored-row' + (draft ? ' afloc-is-draft' : ''), text: (draft ? 'Draft: ' : 'Accepted: ') + row.description + ' (SEG ' + String(row.uid).slice(-10) + ')' }));
      });
    } catch (error) {
      if (state.series === series) e.stored.textContent = error.message;
    }
  }

  // ------------------------------------------------------------------ run

  function addPromptAndRun(finding) {
    var prompts = splitPrompts(state.els.prompt.value);
    if (prompts.map(function (p) { return p.toLowerCase(); }).indexOf(finding.toLowerCase()) === -1) prompts.push(finding);
    state.els.prompt.value = prompts.join('; ');
    run();
  }

  async function run() {
    if (state.busy) return;
    refreshSeries();
    var series = state.series;
    var prompts = splitPrompts(state.els.prompt.value);
    if (!series) return setMessage('No image is shown yet: open a CR or DX series first.', 'error');
    if (!prompts.length) return setMessage('Type a finding to localize, e.g. "right pleural effusion".', 'error');
    if (prompts.length > MAX_PROMPTS) return setMessage('At most ' + MAX_PROMPTS + ' prompts at once (' + prompts.length + ' given).', 'error');
    state.busy = true;
    state.els.run.disabled = true;
    var started = performance.now();
    setMessage('Localizing ' + prompts.map(function (p) { return '"' + p + '"'; }).join(', ') + '...', 'busy');
    try {
      var form = new FormData();
      form.append('params', JSON.stringify({ prompt: prompts.join(';'), threshold: state.threshold, save_heatmap: true }));
      var reply = await request('/infer/afloc?image=' + encodeURIComponent(series.seriesUID) + '&output=json', { method: 'POST', body: form }, 'localizing');
      var body = await reply.json();
      var entries = body.prompts || [];
      if (!entries.length) throw new Error('The server answered without results.');
      var heats = await Promise.all(entries.map(function (entry) {
        if (!entry.heatmap || !entry.heatmap.url) throw new Error('The server did not store the heatmap of "' + entry.prompt + '".');
        return request(entry.heatmap.url, {}, 'fetching the heatmap').then(function (r) { return r.arrayBuffer(); }).then(parseNifti);
      }));
      var shape = body.image && body.image.shape;
      heats.forEach(function (heat, i) {
        if (shape && (heat.height !== shape[0] || heat.width !== shape[1])) {
          throw new Error('Heatmap ' + (i + 1) + ' is ' + heat.width + ' x ' + heat.height + ', the image ' + shape[1] + ' x ' + shape[0] + '.');
        }
      });
      if (state.series !== series) return;
      state.result = {
        reply: body,
        width: heats[0].width,
        height: heats[0].height,
        prompts: entries.map(function (entry, i) {
          return {
            text: entry.prompt,
            negated: !!entry.negated,
            score: entry.score,
            probability: entry.probability,
            heat: heats[i],
            value: i + 1,
            color: SEGMENT_COLORS[i % SEGMENT_COLORS.length],
          };
        }),
        modelVersion: body.model_version,
        elapsed: (performance.now() - started) / 1000,
      };
      state.chosen = entries.map(function (entry) { return !entry.negated; });
      state.heatmapIndex = 0;
      state.threshold = typeof body.threshold === 'number' ? body.threshold : state.threshold;
      state.els.threshold.value = String(state.threshold);
      state.els.thresholdValue.textContent = state.threshold.toFixed(2);
      renderSegments();
      ensureOverlay();
      draw();
      var negated = state.result.prompts.filter(function (p) { return p.negated; });
      setMessage(
        entries.length + (entries.length === 1 ? ' prompt' : ' prompts') + ' localized in ' + state.result.elapsed.toFixed(1) + ' s (model ' + body.model_version + ').' +
          readingNote(body.reading) +
          (negated.length ? ' A negated prompt ("' + negated[0].text + '") shows its heatmap but has no segment.' : ''),
        'ok'
      );
    } catch (error) {
      setMessage(error.message || String(error), 'error');
    } finally {
      state.busy = false;
      state.els.run.disabled = false;
      state.els.prompt.focus();
    }
  }

  function setThreshold(value) {
    state.threshold = value;
    state.els.thresholdValue.textContent = value.toFixed(2);
    drawLegend();
    renderSegmentCounts();
    draw();
  }

  // ------------------------------------------------------------------ segment list

  function renderSegments() {
    var e = state.els;
    e.segments.textContent = '';
    var result = state.result;
    var has = !!(result && result.prompts.length);
    if (has) e.accept.removeAttribute('disabled');
    else e.accept.setAttribute('disabled', 'disabled');
    if (has) e.draft.removeAttribute('disabled');
    else e.draft.setAttribute('disabled', 'disabled');
    if (!has) {
      e.segments.appendChild(el('span', { className: 'afloc-muted', text: 'Run a prompt to see its heatmap and segment.' }));
      return;
    }
    result.prompts.forEach(function (p, i) {
      var tick = el('input', { type: 'checkbox', 'aria-label': 'Keep segment ' + p.text, onchange: function () { state.chosen[i] = tick.checked; renderSegmentCounts(); draw(); } });
      tick.checked = state.chosen[i];
      if (p.negated) tick.disabled = true;
      var show = el('input', { type: 'radio', name: 'afloc-heatmap', 'aria-label': 'Show the heatmap of ' + p.text, onchange: function () { state.heatmapIndex = i; draw(); } });
      show.checked = state.heatmapIndex === i;
      var swatch = el('span', { className: 'afloc-swatch' });
      swatch.style.background = 'rgb(' + p.color.join(',') + ')';
      var details = (p.negated ? 'negated: no segment' : '') + (typeof p.probability === 'number' ? (p.negated ? ', ' : '') + 'p=' + p.probability.toFixed(2) : '');
      e.segments.appendChild(el('div', { className: 'afloc-segment', 'data-index': String(i) }, [
        tick, swatch, el('span', { className: 'afloc-segment-name', text: p.text }),
        el('span', { className: 'afloc-segment-count afloc-muted' }),
        el('span', { className: 'afloc-muted', text: details }),
        el('label', { className: 'afloc-show', title: 'show this heatmap' }, [show, el('span', { text: 'heatmap' })]),
      ]));
    });
    renderSegmentCounts();
  }

  function renderSegmentCounts() {
    var result = state.result;
    if (!result) return;
    var label = combinedLabel(result.prompts, state.threshold, state.chosen);
    var counts = new Array(result.prompts.length + 1).fill(0);
    for (var k = 0; k < label.length; k++) counts[label[k]]++;
    state.counts = counts;
    var rows = state.els.segments.querySelectorAll('.afloc-segment');
    rows.forEach(function (row) {
      var i = Number(row.getAttribute('data-index'));
      var percent = (100 * counts[i + 1]) / label.length;
      row.querySelector('.afloc-segment-count').textContent = result.prompts[i].negated ? '' : percent.toFixed(1) + '% of image';
    });
  }

  // ------------------------------------------------------------------ overlay

  function removeOverlay() {
    var o = state.overlay;
    if (!o) return;
    if (o.element && o.listener) {
      o.events.forEach(function (name) { o.element.removeEventListener(name, o.listener); });
    }
    if (o.canvas.parentNode) o.canvas.parentNode.removeChild(o.canvas);
    if (o.resize) o.resize.disconnect();
    state.overlay = null;
  }

  function ensureOverlay() {
    var current = activeViewport();
    if (!current || !current.csViewport) throw new Error('The viewport is not ready yet: wait for the image and try again.');
    var element = current.csViewport.element;
    if (state.overlay && state.overlay.element === element && state.overlay.canvas.parentNode) return;
    removeOverlay();
    var canvas = el('canvas', { className: 'afloc-overlay', 'data-afloc-overlay': '1' });
    if (getComputedStyle(element).position === 'static') element.style.position = 'relative';
    element.appendChild(canvas);
    var listener = function () { scheduleDraw(); };
    var Events = state.cornerstone.Enums.Events;
    var events = [Events.IMAGE_RENDERED, Events.CAMERA_MODIFIED].filter(Boolean);
    events.forEach(function (name) { element.addEventListener(name, listener); });
    var resize = typeof ResizeObserver === 'function' ? new ResizeObserver(listener) : null;
    if (resize) resize.observe(element);
    state.overlay = { canvas: canvas, element: element, listener: listener, events: events, resize: resize, key: '' };
  }

  var drawPending = false;
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(function () { drawPending = false; draw(); });
  }

  /** Image pixel (column, row) corner -> canvas CSS pixel, as cornerstone draws the image. */
  function imageToCanvas(csViewport, imageId, x, y) {
    var world = state.cornerstone.utilities.imageToWorldCoords(imageId, [x, y]);
    return csViewport.worldToCanvas(world);
  }

  function draw() {
    var o = state.overlay;
    var result = state.result;
    if (!o || !result) return;
    var current = activeViewport();
    if (!current || !current.csViewport || current.seriesUID !== state.series.seriesUID) return;
    var vp = current.csViewport;
    var imageId = vp.getCurrentImageId && vp.getCurrentImageId();
    if (!imageId) return;
    var dpr = window.devicePixelRatio || 1;
    var cssW = o.element.clientWidth;
    var cssH = o.element.clientHeight;
    var W = Math.max(1, Math.round(cssW * dpr));
    var H = Math.max(1, Math.round(cssH * dpr));
    if (o.canvas.width !== W || o.canvas.height !== H) {
      o.canvas.width = W;
      o.canvas.height = H;
    }
    // Affine map from image (corner convention: pixel (c, r) covers [c, c+1) x [r, r+1)) to device pixels.
    var p0 = imageToCanvas(vp, imageId, 0, 0);
    var px = imageToCanvas(vp, imageId, 1, 0);
    var py = imageToCanvas(vp, imageId, 0, 1);
    var ax = (px[0] - p0[0]) * dpr, ay = (px[1] - p0[1]) * dpr; // d(canvas)/d(column)
    var bx = (py[0] - p0[0]) * dpr, by = (py[1] - p0[1]) * dpr; // d(canvas)/d(row)
    var det = ax * by - ay * bx;
    if (!isFinite(det) || Math.abs(det) < 1e-12) return;
    var ox = p0[0] * dpr, oy = p0[1] * dpr;
    // Inverse: column = (by*(u-ox) - bx*(v-oy))/det, row = (-ay*(u-ox) + ax*(v-oy))/det
    var iw = result.width, ih = result.height;
    var prompts = result.prompts;
    var t = Math.fround(state.threshold);
    var shown = prompts[state.heatmapIndex] || prompts[0];
    var showHeat = state.opacity > 0;
    var alpha = Math.round(255 * state.opacity);
    var ctx = o.canvas.getContext('2d');
    var img = ctx.createImageData(W, H);
    var out = img.data;
    var labels = new Uint8Array(W * H);
    var active = [];
    prompts.forEach(function (p, i) { if (!p.negated && state.chosen[i]) active.push(i); });
    var boxes = prompts.map(function () { return null; });
    for (var v = 0; v < H; v++) {
      var dv = v + 0.5 - oy;
      for (var u = 0; u < W; u++) {
        var du = u + 0.5 - ox;
        var col = Math.floor((by * du - bx * dv) / det);
        var row = Math.floor((-ay * du + ax * dv) / det);
        if (col < 0 || row < 0 || col >= iw || row >= ih) continue;
        var k = row * iw + col;
        var q = v * W + u;
        if (showHeat) {
          var li = 3 * heatIndex(shown.heat.data[k]);
          out[4 * q] = LUT[li];
          out[4 * q + 1] = LUT[li + 1];
          out[4 * q + 2] = LUT[li + 2];
          out[4 * q + 3] = alpha;
        }
        var best = -1, bestHeat = 0;
        for (var a = 0; a < active.length; a++) {
          var h = prompts[active[a]].heat.data[k];
          if (h >= t && (best === -1 || h > bestHeat)) { best = active[a]; bestHeat = h; }
        }
        if (best >= 0) {
          labels[q] = best + 1;
          var box = boxes[best];
          if (!box) boxes[best] = { u0: u, v0: v, u1: u, v1: v };
          else {
            if (u < box.u0) box.u0 = u;
            if (u > box.u1) box.u1 = u;
            if (v > box.v1) box.v1 = v;
          }
        }
      }
    }
    // Outline: mask pixels with a pixel of another label within OUTLINE_PX (4 directions).
    for (var vv = 0; vv < H; vv++) {
      for (var uu = 0; uu < W; uu++) {
        var q2 = vv * W + uu;
        var lab = labels[q2];
        if (!lab) continue;
        var edge = false;
        for (var d = 1; d <= OUTLINE_PX && !edge; d++) {
          if (uu - d < 0 || labels[q2 - d] !== lab) edge = true;
          else if (uu + d >= W || labels[q2 + d] !== lab) edge = true;
          else if (vv - d < 0 || labels[q2 - d * W] !== lab) edge = true;
          else if (vv + d >= H || labels[q2 + d * W] !== lab) edge = true;
        }
        if (edge) {
          var c = prompts[lab - 1].color;
          out[4 * q2] = c[0];
          out[4 * q2 + 1] = c[1];
          out[4 * q2 + 2] = c[2];
          out[4 * q2 + 3] = 255;
        }
      }
    }
    ctx.putImageData(img, 0, 0);
    // Names: a dark tag with the prompt above each segment's top-left.
    ctx.font = Math.round(12 * dpr) + 'px Inter, sans-serif';
    ctx.textBaseline = 'bottom';
    var placed = [];
    boxes.forEach(function (box, i) {
      if (!box) return;
      var name = prompts[i].text;
      var tw = ctx.measureText(name).width + 14 * dpr;
      var th = 16 * dpr;
      var x = Math.min(Math.max(0, box.u0), W - tw);
      var y = Math.max(th, box.v0 - 3 * dpr);
      // Tags of segments that start at the same place are stacked, not drawn over each other.
      for (var tries = 0; tries < prompts.length; tries++) {
        var hit = placed.some(function (r) { return x < r[0] + r[2] && r[0] < x + tw && y - th < r[1] && r[1] - r[3] < y; });
        if (!hit) break;
        y += th + 2 * dpr;
      }
      placed.push([x, y, tw, th]);
      ctx.fillStyle = 'rgba(0,0,0,0.75)';
      ctx.fillRect(x, y - th, tw, th);
      ctx.fillStyle = 'rgb(' + prompts[i].color.join(',') + ')';
      ctx.fillRect(x + 2 * dpr, y - th + 4 * dpr, 6 * dpr, th - 8 * dpr);
      ctx.fillStyle = '#fff';
      ctx.fillText(name, x + 11 * dpr, y - 2 * dpr);
    });
    state.drawCount++;
    state.lastDraw = {
      canvas: [W, H],
      dpr: dpr,
      imageCorners: [[p0[0], p0[1]], imageToCanvas(vp, imageId, iw, 0), imageToCanvas(vp, imageId, 0, ih), imageToCanvas(vp, imageId, iw, ih)],
      threshold: state.threshold,
      opacity: state.opacity,
      heatmapIndex: state.heatmapIndex,
    };
  }

  function drawLegend() {
    var canvas = state.els.legend;
    if (!canvas) return;
    var ctx = canvas.getContext('2d');
    var w = canvas.width, barH = 12;
    ctx.clearRect(0, 0, w, canvas.height);
    for (var x = 0; x < w; x++) {
      var i = 3 * Math.round((x / (w - 1)) * 255);
      ctx.fillStyle = 'rgb(' + LUT[i] + ',' + LUT[i + 1] + ',' + LUT[i + 2] + ')';
      ctx.fillRect(x, 0, 1, barH);
    }
    var tx = Math.round(((state.threshold + 1) / 2) * (w - 1));
    ctx.fillStyle = '#fff';
    ctx.fillRect(tx - 1, 0, 2, barH + 3);
    ctx.font = '10px Inter, sans-serif';
    ctx.textBaseline = 'top';
    ctx.fillStyle = '#ccc';
    ctx.textAlign = 'left';
    ctx.fillText('-1 unlike', 0, barH + 2);
    ctx.textAlign = 'center';
    ctx.fillText('0', w / 2, barH + 2);
    ctx.textAlign = 'right';
    ctx.fillText('+1 like the prompt', w, barH + 2);
  }

  // ------------------------------------------------------------------ accept / draft

  /** The label of the ticked segments, renumbered 1..N in prompt order, and their segments. */
  function chosenLabel() {
    var result = state.result;
    var label = combinedLabel(result.prompts, state.threshold, state.chosen);
    var counts = new Array(result.prompts.length + 1).fill(0);
    for (var k = 0; k < label.length; k++) counts[label[k]]++;
    var remap = new Uint8Array(256);
    var segments = [];
    result.prompts.forEach(function (p, i) {
      if (counts[i + 1] > 0) {
        remap[i + 1] = segments.length + 1;
        segments.push({ value: segments.length + 1, name: p.text, color: p.color });
      }
    });
    for (var j = 0; j < label.length; j++) label[j] = remap[label[j]];
    return { label: label, segments: segments };
  }

  async function save(kind) {
    var result = state.result;
    if (!result || state.busy) return;
    var chosen = chosenLabel();
    if (!chosen.segments.length) return setMessage('No segment to store: tick a segment, or lower the threshold until it covers pixels.', 'error');
    state.busy = true;
    var what = kind === 'final' ? 'storing the accepted segments' : 'storing the draft';
    setMessage(what.charAt(0).toUpperCase() + what.slice(1) + '...', 'busy');
    try {
      var form = new FormData();
      form.append('label', new Blob([chosen.label], { type: 'application/octet-stream' }), 'label.raw');
      form.append('params', JSON.stringify({ segments: chosen.segments, model_version: result.modelVersion, threshold: state.threshold }));
      var url = '/afloc/segments?image=' + encodeURIComponent(state.series.seriesUID) + '&kind=' + kind;
      var reply = await request(url, { method: 'POST', body: form }, what);
      var body = await reply.json();
      state.lastSave = body;
      setMessage(
        (kind === 'final' ? 'Accepted: ' : 'Draft kept: ') + body.segments.join(', ') + ' stored in the PACS as "' + body.series_description + '"' +
          (body.draft ? ' and under ' + body.draft.tag : '') + '.',
        'ok'
      );
      loadStored();
    } catch (error) {
      setMessage(error.message || String(error), 'error');
    } finally {
      state.busy = false;
    }
  }

  // ------------------------------------------------------------------ extension and hook

  var poller = null;
  function enter(servicesManager, extensionManager) {
    state.services = servicesManager.services;
    state.cornerstone = extensionManager
      .getModuleEntry('@ohif/extension-cornerstone.utilityModule.common')
      .exports.getCornerstoneLibraries().cornerstone;
    if (poller) clearInterval(poller);
    // The panel follows the active viewport's series (cheap check, twice a second).
    poller = setInterval(function () {
      try { refreshSeries(); } catch (error) { /* viewer still loading */ }
    }, 500);
  }

  function exit() {
    if (poller) clearInterval(poller);
    poller = null;
    removeOverlay();
    state.services = null;
    state.series = null;
    state.result = null;
  }

  var extension = {
    id: EXTENSION_ID,
    version: '1.0.0',
    getPanelModule: function () {
      return [{ name: PANEL_NAME, iconName: 'tab-segmentation', iconLabel: 'AFLoc', label: 'AFLoc', secondaryLabel: 'AFLoc', component: PanelComponent }];
    },
  };

  window.__aflocPanel = {
    panelId: EXTENSION_ID + '.panelModule.' + PANEL_NAME,
    enter: enter,
    exit: exit,
    splitPrompts: splitPrompts,
    reportFindings: reportFindings,
    readingNote: readingNote,
    parseNifti: parseNifti,
    combinedLabel: combinedLabel,
    fnv1a: fnv1a,
    replyError: replyError,
    request: request,
    signInWith: signInWith,
    setToken: setToken,
    authHeader: authHeader,
    colormap: function () { return Array.from(LUT); },
    /** What the panel holds now (for the e2e test; pixels on screen are checked separately). */
    snapshot: function () {
      var r = state.result;
      var out = {
        series: state.series && { seriesUID: state.series.seriesUID, studyUID: state.series.studyUID },
        threshold: state.threshold,
        opacity: state.opacity,
        message: state.els.message ? state.els.message.textContent : '',
        lastError: state.lastError,
        lastSave: state.lastSave,
        lastDraw: state.lastDraw || null,
        drawCount: state.drawCount,
        reportFindings: state.reportFindings || [],
        storedSeries: state.storedSeries || [],
        focused: document.activeElement === state.els.prompt,
        signedIn: auth.token ? auth.user || 'token' : null,
      };
      if (r) {
        var label = combinedLabel(r.prompts, state.threshold, null);
        var nonZero = 0;
        for (var k = 0; k < label.length; k++) if (label[k]) nonZero++;
        out.result = {
          width: r.width,
          height: r.height,
          prompts: r.prompts.map(function (p) { return p.text; }),
          modelVersion: r.modelVersion,
          label: { total: label.length, nonZero: nonZero, fnv1a: fnv1a(label) },
          heatFnv1a: r.prompts.map(function (p) { return fnv1a(new Uint8Array(p.heat.data.buffer, p.heat.data.byteOffset, p.heat.data.byteLength)); }),
        };
      }
      return out;
    },
  };

  window.config = window.config || {};
  window.config.extensions = (window.config.extensions || []).concat([extension]);
})();
