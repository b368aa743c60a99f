# Neural Style for GIMP on Windows: the same steps as install.sh, kept simple.
# NOT TESTED: this project's machines and CI run Linux only.
#
#   powershell -ExecutionPolicy Bypass -File install\install.ps1
#
# Creates .venv with the server, fetches the VGG19 weights, installs the plug-in into every
# %APPDATA%\GIMP\3.N\plug-ins\neural_style, records how to start the server, and starts it.
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
# Into EVERY GIMP 3.N profile that exists, as install_plugin.sh does on Linux and macOS. Never
# create the profile of a GIMP that has not run: GIMP 3.2 copies a 3.0 profile (plug-ins
# included) only when its own folder is absent. Only when there is no 3.N profile at all is
# 3.0 created, which every GIMP 3 then finds.
$GimpBase = Join-Path $env:APPDATA "GIMP"
$GimpProfiles = @()
if (Test-Path $GimpBase) {
    $GimpProfiles = @(Get-ChildItem -Path $GimpBase -Directory |
        Where-Object { $_.Name -match '^3\.\d+$' } | ForEach-Object { $_.FullName })
}
if ($GimpProfiles.Count -eq 0) {
    $GimpProfiles = @(Join-Path $GimpBase "3.0")
    Write-Host "no GIMP 3 profile found: creating $($GimpProfiles[0])"
}
# Where the server keeps its token, as the server resolves it; recorded for the plug-in.
$ConfigHome = if ($env:XDG_CONFIG_HOME) { $env:XDG_CONFIG_HOME } else { Join-Path $HOME ".config" }
$TokenFile = Join-Path $ConfigHome "neural-style\token"
$Source = Join-Path $Repo "gimp_plugin\neural_style"
foreach ($GimpProfile in $GimpProfiles) {
    $Dest = Join-Path $GimpProfile "plug-ins\neural_style"
    $ConfigFile = Join-Path $Dest "plugin.json"
    # Keep what an earlier install recorded in plugin.json; replace everything else.
    $Config = [ordered]@{}
    if (Test-Path $ConfigFile) {
        try {
            $Old = Get-Content -Raw $ConfigFile | ConvertFrom-Json
            foreach ($Field in $Old.PSObject.Properties) { $Config[$Field.Name] = $Field.Value }
        } catch { Write-Host "ignoring an unreadable $ConfigFile" }
    }
    New-Item -ItemType Directory -Force -Path $Dest | Out-Null
    Get-ChildItem -Path $Dest | Where-Object { $_.Name -ne "plugin.json" } |
        Remove-Item -Recurse -Force
    # The whole folder: neural_style.py and the nst_client package beside it.
    Copy-Item -Path (Join-Path $Source "*") -Destination $Dest -Recurse -Force `
        -Exclude "__pycache__", "plugin.json"
    $Config["server_url"] = $Url
    $Config["start_command"] = "`"$Server`" serve --port $Port"
    if (-not $Config.Contains("token_file")) { $Config["token_file"] = $TokenFile }
    $Config | ConvertTo-Json | Set-Content -Encoding UTF8 $ConfigFile
    Write-Host "installed $Dest (settings: $ConfigFile)"
}

Write-Host "==> starting the server in the background"
Start-Process -FilePath $Server -ArgumentList "serve", "--port", $Port -WindowStyle Hidden
Write-Host "==> server starting at $Url; restart GIMP, then use Filters > Artistic > Neural Style..."
