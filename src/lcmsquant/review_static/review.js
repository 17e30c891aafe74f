// lcmsquant review: placeholder until the workspace lands.
const TOKEN = document.querySelector('meta[name="review-token"]').content;
fetch(`/api/state?token=${TOKEN}`).then(r => r.json()).then(s => {
  document.getElementById("batch").textContent = s.batch;
  document.getElementById("app").textContent = `${s.rows.length} rows`;
});
