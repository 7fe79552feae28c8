/*
 * Sign-in to an AFLoc Label server with authentication on, for the whole viewer.
 *
 * lib/ohif_static.py appends this file to the bundle's app-config.js (after the panel). With
 * MONAI_LABEL_AUTH_ENABLE=true the server wants `Authorization: Bearer <token>` on every data
 * request: the study list and images (QIDO-RS / WADO-RS through /proxy/dicom) as much as the
 * AFLoc panel's. The viewer's own files are public (they hold no data), so the page loads; this
 * extension then
 * - gives OHIF's userAuthenticationService the token that the sign-in stored for this tab
 *   (sessionStorage `afloc-label.access-token`, shared with the panel's "Server sign-in"), which
 *   OHIF's DICOMweb data source puts on its requests;
 * - sets the viewer's HTTP error handler (appConfig.httpErrorHandler, called by the DICOMweb
 *   client on a failed request): a 401 shows a sign-in form over the viewer, saying whether a
 *   token is missing or was rejected. The form signs in through the panel's signInWith
 *   (POST /auth/token, or a pasted token checked with GET /auth/token/valid), then reloads the
 *   page so that the data source starts again with the token.
 * When the viewer is configured with OHIF's own OpenID Connect login (`oidc` in app-config),
 * OHIF provides the token and this extension does nothing.
 *
 * Test hook: window.__aflocSignIn (show, shown).
 */
(function () {
  'use strict';

  var EXTENSION_ID = 'afloc-label-sign-in';
  var TOKEN_KEY = 'afloc-label.access-token'; // the panel's key (afloc_panel.js)
  var FORM_ID = 'afloc-signin';
  // Inline: the panel's stylesheet is not loaded on the study list.
  var FORM_STYLE =
    'position:fixed;top:90px;left:50%;transform:translateX(-50%);z-index:10000;width:340px;display:grid;gap:8px;' +
    'padding:16px;background:#0b1a30;color:#e6e9ef;border:1px solid #3a4a66;border-radius:6px;font-size:13px;';
  var INPUT_STYLE = 'background:#13243f;color:#e6e9ef;border:1px solid #3a4a66;border-radius:4px;padding:4px 6px;';
  var BUTTON_STYLE = 'background:#1f6f8b;color:#fff;border:1px solid #2a8cb0;border-radius:4px;padding:5px 10px;cursor:pointer;';

  function storedToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || null;
    } catch (error) {
      return null;
    }
  }

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

  var form = null;

  /** Show the sign-in form (once); `rejected`: the server refused the token the page sent. */
  function show(rejected) {
    if (form && form.parentNode) return;
    if (!window.__aflocPanel || !window.__aflocPanel.signInWith) return;
    var message = el('div', {
      id: FORM_ID + '-message', role: 'alert', className: 'afloc-signin-message',
      text: rejected
        ? 'The AFLoc server rejected your sign-in token (expired or not valid): sign in again.'
        : 'The AFLoc server asks you to sign in before it shows studies.',
    });
    var user = el('input', { id: FORM_ID + '-user', type: 'text', autocomplete: 'username', placeholder: 'user name', 'aria-label': 'User name', style: INPUT_STYLE });
    var password = el('input', { id: FORM_ID + '-password', type: 'password', autocomplete: 'current-password', placeholder: 'password', 'aria-label': 'Password', style: INPUT_STYLE });
    var token = el('input', { id: FORM_ID + '-token', type: 'password', autocomplete: 'off', placeholder: 'or paste an access token', 'aria-label': 'Access token', style: INPUT_STYLE });
    var button = el('button', { id: FORM_ID + '-submit', type: 'submit', className: 'afloc-btn afloc-primary', text: 'Sign in', style: BUTTON_STYLE });
    form = el('form', {
      id: FORM_ID, className: 'afloc-signin', 'aria-label': 'Sign in to the AFLoc server', style: FORM_STYLE,
      onsubmit: function (event) {
        event.preventDefault();
        button.disabled = true;
        message.textContent = 'Signing in...';
        window.__aflocPanel
          .signInWith({ username: user.value.trim(), password: password.value, token: token.value.trim() })
          .then(function () {
            message.textContent = 'Signed in; loading the studies...';
            window.location.reload();
          })
          .catch(function (error) {
            password.value = '';
            token.value = '';
            button.disabled = false;
            message.textContent = 'Sign-in failed: ' + (error.message || error);
          });
      },
      onkeydown: function (event) { event.stopPropagation(); }, // keep the viewer's hotkeys out
    }, [
      el('div', { className: 'afloc-title', text: 'AFLoc Label: sign in', style: 'font-size:15px;font-weight:600;color:#5acce6;' }),
      message, user, password, token, button,
    ]);
    document.body.appendChild(form);
    user.focus();
  }

  var extension = {
    id: EXTENSION_ID,
    version: '1.0.0',
    preRegistration: function (options) {
      var appConfig = options.appConfig || {};
      if (appConfig.oidc) return; // OHIF's own login provides the token
      options.servicesManager.services.userAuthenticationService.setServiceImplementation({
        getAuthorizationHeader: function () {
          var t = storedToken();
          return t ? { Authorization: 'Bearer ' + t } : undefined;
        },
      });
      var previous = appConfig.httpErrorHandler;
      appConfig.httpErrorHandler = function (error) {
        if (error && error.status === 401) show(!!storedToken());
        if (typeof previous === 'function') return previous(error);
      };
    },
  };

  window.__aflocSignIn = {
    show: show,
    shown: function () { return !!(form && form.parentNode); },
  };

  window.config = window.config || {};
  window.config.extensions = (window.config.extensions || []).concat([extension]);
})();
