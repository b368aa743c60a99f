# Neural Style for GIMP on Windows: the same steps as install.sh, kept simple.
# NOT TESTED: this project's machines and CI run Linux only.
#
#   powershell -ExecutionPolicy Bypass -File install\install.ps1
#
# Creates .venv with the server, fetches the VGG19 weights, installs the plug-in into
# %APPDATA%\GIMP\3.0\plug-ins\neural_style, records how to start the server, and starts it.
$ErrorActionPreference = "Stop"
$Repo = Split-Path -Parent $PSScriptRoot
$Venv = Join-Path $Repo ".venv"
$Port = if ($env:NST_PORT) { $env:NST_PORT } else { "8765" }
$Url = "http://127.0.0.1:$Port"

$Python = (Get-Command py -ErrorAction SilentlyContinue)
if (-not $Python) { throw "Python 3.10-3.13 is needed: install it from python.org, then run this again" }
if (-not (Test-Path (Join-Path $Venv "Scripts\python.exe"))) {
    Write-Host "==> creating the Python environment in $Venv"
    & py -3.11 -m venv $Venv
    if ($LASTEXITCODE -ne 0) { & py -3 -m venv $Venv }
}
$Py = Join-Path $Venv "Scripts\python.exe"
$Server = Join-Path $Venv "Scripts\nst-server.exe"
Write-Host "==> installing the server (TensorFlow for the CPU; about 1 GB the first time)"
& $Py -m pip install --quiet --upgrade pip
& $Py -m pip install --quiet -e "$Repo"
if ($LASTEXITCODE -ne 0) { throw "pip install failed; see the messages above" }

Write-Host "==> fetching the VGG19 weights (once)"
& $Server fetch-weights
if ($LASTEXITCODE -ne 0) { throw "could not fetch the weights; see the message above" }

Write-Host "==> installing the GIMP 3 plug-in"
$Dest = Join-Path $env:APPDATA "GIMP\3.0\plug-ins\neural_style"
New-Item -ItemType Directory -Force -Path $Dest | Out-Null
Copy-Item (Join-Path $Repo "gimp_plugin\neural_style\*.py") $Dest -Force
$Config = @{ server_url = $Url; start_command = "`"$Server`" serve --port $Port" }
$Config | ConvertTo-Json | Set-Content -Encoding UTF8 (Join-Path $Dest "plugin.json")

Write-Host "==> starting the server in the background"
Start-Process -FilePath $Server -ArgumentList "serve", "--port", $Port -WindowStyle Hidden
Write-Host "==> server starting at $Url; restart GIMP, then use Filters > Artistic > Neural Style..."
