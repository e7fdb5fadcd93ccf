"""What the kit tells the KPPS, in Bahasa Indonesia (log, systemd status, demo output)."""

from __future__ import annotations

READY = "Kit siap. Letakkan halaman C.HASIL di bawah kamera, lalu tekan tombol."
BUSY = "Sedang memotret dan membaca halaman, mohon tunggu…"
OK = "Halaman {halaman} terbaca dan tersimpan (no. {seq}). Angka akan dikirim otomatis."
REVIEW = ("Halaman {halaman} tersimpan (no. {seq}) tetapi PERLU DIPERIKSA: {reasons}. "
          "Cocokkan angka di formulir; bila perlu perbaiki lalu foto ulang.")
# (each reason of the reader already says what to do; the checklist is for a reason without its own text)
RETAKE = "Foto tidak bisa dibaca: {reasons}. Tekan tombol untuk memotret ulang."
RETAKE_CHECKLIST = ("Foto tidak bisa dibaca: {reasons}. Rapikan halaman di bawah kamera (seluruh halaman "
                    "terlihat, rata, tidak tertutup tangan, cukup terang), lalu tekan tombol lagi.")
QUEUED = "Belum ada sinyal: {n} pesan menunggu dikirim. Data aman tersimpan di kit."
SENT_ALL = "Semua data sudah terkirim."
STATUS = ("Status: {total} foto tersimpan ({ok} terbaca, {review} perlu diperiksa, {retake} foto ulang); "
          "{queued} pesan menunggu dikirim; koneksi {link}.")
RESEND = "Mencoba mengirim ulang data yang belum terkirim."
NOT_SENDING = "Kit ini tidak mengirim (dijalankan tanpa koneksi, --no-send): semua data tersimpan di kit."
LOW_BATTERY = "Baterai lemah ({level}). Sambungkan daya atau siapkan baterai cadangan."
SHUTDOWN = "Baterai hampir habis ({level}). Data sudah tersimpan; kit dimatikan dengan aman."
STOPPING = "Kit berhenti. Semua data yang sudah tersimpan tetap aman."

ERR_CAMERA_TIMEOUT = ("Kamera tidak merespons. Tekan tombol sekali lagi; bila berulang, matikan lalu "
                      "nyalakan kit. Data sebelumnya aman.")
ERR_CAMERA = "Gagal memotret: {detail}. Kit tetap siap; tekan tombol lagi. Data sebelumnya aman."
ERR_DISK_FULL = ("Penyimpanan penuh ({detail}). Foto ini TIDAK tersimpan; hubungi operator. "
                 "Data sebelumnya aman.")
ERR_STORE = "Gagal menyimpan: {detail}. Tekan tombol lagi; data sebelumnya aman."
ERR_STORE_READONLY = ("Penyimpanan kit tidak bisa ditulis ({detail}). Foto ini TIDAK tersimpan dan menekan "
                      "tombol lagi tidak membantu; hubungi teknisi. Data sebelumnya aman.")
ERR_READER = "Gagal membaca foto: {detail}. Tekan tombol lagi; data sebelumnya aman."

# a part that did not open (camera unplugged, model file damaged): the kit keeps running, sends what it has
# stored and tries the part again by itself
FAULT_PARTS = {"camera": "kamera", "model": "model pembaca angka", "storage": "penyimpanan (kartu SD)"}
FAULT = ("KIT RUSAK: {parts} tidak bisa dipakai ({detail}). Foto belum bisa diambil. Data yang sudah "
         "tersimpan aman dan tetap dikirim. {fix}")
# the Camera Module is found only when the kit starts, and its cable is never touched with the power on
FAULT_FIX = {"camera": ("Matikan kit, periksa kabel pita kamera, lalu nyalakan kit lagi; bila tetap rusak, "
                        "hubungi teknisi."),
             "model": "Hubungi teknisi (pasang ulang tpskit).",
             "storage": ("Jangan cabut kartu SD; hubungi teknisi. Foto baru tidak bisa disimpan sampai kartu "
                         "bisa ditulis lagi (kit mencobanya sendiri).")}
FAULT_REBOOT = "{parts} masih tidak bisa dipakai: kit dinyalakan ulang sekali. Data aman tersimpan."
RECOVERED = "Kerusakan teratasi. " + READY


def fault_parts(faults: dict[str, str]) -> str:
    """The parts that are down, in the KPPS's words ("kamera dan model pembaca angka")."""
    return " dan ".join(FAULT_PARTS.get(name, name) for name in faults)


def fault_text(faults: dict[str, str]) -> str:
    """One message for every part that is down (``faults``: part name -> what went wrong)."""
    parts = fault_parts(faults)
    detail = "; ".join(faults.values())
    fix = " ".join(FAULT_FIX.get(name, "Hubungi teknisi.") for name in faults)
    return FAULT.format(parts=parts, detail=detail, fix=fix)

REASONS_FALLBACK = "alasan tidak diketahui"


def reasons_text(reading: dict) -> str:
    """The reader's reasons as one sentence: prefer its Indonesian text, fall back to the codes."""
    parts: list[str] = []
    for r in reading.get("reasons", []) or []:
        if isinstance(r, dict):
            parts.append(str(r.get("message") or r.get("text") or r.get("pesan") or r.get("code") or r))
        else:
            parts.append(str(r))
    # the templates add the full stop: strip the reader's own so the KPPS never sees ".."
    return "; ".join(p.rstrip(" .") for p in parts) if parts else REASONS_FALLBACK


def retake_text(reading: dict) -> str:
    """The retake message: the reader's reasons, each with its own advice, or the checklist where a reason
    has no text of its own (a bare code, none at all)."""
    reasons = reading.get("reasons", []) or []
    advised = bool(reasons) and all(isinstance(r, dict) and r.get("message") for r in reasons)
    return (RETAKE if advised else RETAKE_CHECKLIST).format(reasons=reasons_text(reading))


def battery_text(level: float | None) -> str:
    return f"{level:.0f}%" if level is not None else "level tidak diketahui"
