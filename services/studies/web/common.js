/* Shared by reader.js and owner.js (loaded first by both pages). */
'use strict';
window.StudyCommon = Object.freeze({
  // The server's error message of an error response body ({"detail": "..."}; FastAPI's list form joined).
  detailOf(data, status) {
    const d = data && data.detail;
    if (typeof d === 'string' && d) return d;
    if (Array.isArray(d)) return d.map((x) => (x && x.msg) || String(x)).join('; ');
    return `The server answered with status ${status}.`;
  },
});
