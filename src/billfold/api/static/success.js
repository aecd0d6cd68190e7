document.getElementById("copy-button").addEventListener("click", function () {
  var text = document.getElementById("session-id").textContent;
  var status = document.getElementById("copy-status");
  function done() { status.textContent = "Copied."; }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { select(); });
  } else { select(); }
  function select() {
    var range = document.createRange();
    range.selectNodeContents(document.getElementById("session-id"));
    var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
    try { document.execCommand("copy"); done(); } catch (e) { status.textContent = "Press Ctrl+C to copy."; }
  }
});
