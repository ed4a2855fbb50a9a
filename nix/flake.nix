{
  description = "hubtrust: conformance suite for JupyterHub deployments";

  # For machines with a Nix binary cache. hubtrust itself pins the component
  # versions it tests (fixtures/); this flake pins the toolchain and the
  # system tools around them.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachSystem [ "x86_64-linux" "aarch64-linux" ] (system:
      let
        pkgs = nixpkgs.legacyPackages.${system};
        # What `hubtrust doctor` asks for: python3 with venv, node >= 18,
        # npm, iproute2, util-linux (unshare, nsenter, setpriv).
        runtimeTools = [
          pkgs.python311
          pkgs.nodejs_20
          pkgs.iproute2
          pkgs.util-linux
          pkgs.cacert
          # User tools the enterprise profile runs inside the lab.
          pkgs.curl
          pkgs.git
          # The HPC profile: sshd on login and compute nodes, ssh for the
          # broker and spawner, tar for ca_certs.tar.gz, a lagging clock.
          # On Nix, point $HUBTRUST_PYTHON at this python3 and run sshd as
          # root; the HPC profile looks for sshd at /usr/sbin/sshd.
          pkgs.openssh
          pkgs.gnutar
          pkgs.libfaketime
          # The docker backend's offline image build (the daemon itself is
          # the system's: virtualisation.docker on NixOS).
          pkgs.debootstrap
        ];
        hubtrust = pkgs.rustPlatform.buildRustPackage {
          pname = "hubtrust";
          version = "0.1.0";
          src = ./..;
          cargoLock.lockFile = ../Cargo.lock;
          cargoBuildFlags = [ "-p" "hubtrust" ];
          # The end-to-end tests need namespaces and the network registries;
          # they run in CI, not in the sandbox.
          doCheck = false;
          nativeBuildInputs = [ pkgs.makeWrapper ];
          postInstall = ''
            mkdir -p $out/share/hubtrust
            cp -r ${./..}/features ${./..}/fixtures ${./..}/scripts $out/share/hubtrust/
            wrapProgram $out/bin/hubtrust \
              --prefix PATH : ${pkgs.lib.makeBinPath runtimeTools} \
              --set-default HUBTRUST_FEATURES $out/share/hubtrust/features
          '';
        };
      in {
        packages.default = hubtrust;
        packages.hubtrust = hubtrust;

        # An OCI image carrying hubtrust and its runtime tools, for the docker
        # backend's runner.
        packages.image = pkgs.dockerTools.buildLayeredImage {
          name = "hubtrust";
          tag = "latest";
          contents = [ hubtrust pkgs.bashInteractive pkgs.coreutils ] ++ runtimeTools;
          config.Entrypoint = [ "${hubtrust}/bin/hubtrust" ];
        };

        devShells.default = pkgs.mkShell {
          packages = runtimeTools ++ [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.cargo-nextest
          ];
        };

        apps.default = flake-utils.lib.mkApp { drv = hubtrust; };
      });
}
