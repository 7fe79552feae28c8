/*
 * AFLoc X-ray mode for the OHIF v3 viewer bundled in monailabel 0.8.5.
 *
 * lib/ohif_static.py appends this file to the bundle's app-config.js, so it runs before the
 * viewer starts and adds one mode to window.config.modes (OHIF loads mode objects from its
 * configuration next to the built-in ones). No part of the bundle is changed.
 *
 * Why a mode of our own: the bundled "MONAI Label" mode accepts only CT/MR studies and hangs
 * them in an MPR layout, which cannot show a single projection radiograph. This mode shows
 * CR/DX (and other 2D) studies in a stack viewport, with the AFLoc panel (lib/ohif/afloc_panel.js:
 * prompt box, heatmap overlay, threshold, Accept into the PACS) and the stock MONAI Label panel
 * on the right. The panel writes inference results into a labelmap *volume*
 * (segmentationService.getLabelmapVolume); a stack viewport keeps its labelmap as images, so
 * the mode gives that call a stand-in that reads and writes the stack's labelmap images.
 *
 * Route: /ohif/afloc?StudyInstanceUIDs=<uid>. Test hook: window.__aflocOhif.
 */
(function () {
  'use strict';

  var MODE_ID = 'afloc-label-xray';
  var IDS = {
    layout: '@ohif/extension-default.layoutTemplateModule.viewerLayout',
    stack: '@ohif/extension-default.sopClassHandlerModule.stack',
    seriesList: '@ohif/extension-default.panelModule.seriesList',
    viewport: '@ohif/extension-cornerstone.viewportModule.cornerstone',
    segSopClass: '@ohif/extension-cornerstone-dicom-seg.sopClassHandlerModule.dicom-seg',
    segViewport: '@ohif/extension-cornerstone-dicom-seg.viewportModule.dicom-seg',
    monaiPanel: '@ohif/extension-monai-label.panelModule.monailabel',
    // lib/ohif/afloc_panel.js registers this extension (it is appended after this file).
    aflocPanel: 'afloc-label.panelModule.afloc',
    tools: '@ohif/extension-cornerstone.utilityModule.tools',
    common: '@ohif/extension-cornerstone.utilityModule.common',
  };
  // Projection radiography and other single-image modalities this mode is offered for.
  var MODALITIES = ['CR', 'DX', 'DR', 'RG', 'MG', 'IO', 'PX', 'XA', 'RF', 'OT'];
  var TOOL_GROUP = 'default';
  var SERVER_COOKIE = 'MONAILABEL_SERVER_URL';

  function setToolActive() {
    return { commandName: 'setToolActiveToolbar', commandOptions: { toolGroupIds: [TOOL_GROUP] } };
  }

  function toolbarButtons() {
    function tool(id, icon, label) {
      return {
        id: id,
        uiType: 'ohif.radioGroup',
        props: { icon: icon, label: label, commands: setToolActive(), evaluate: 'evaluate.cornerstoneTool' },
      };
    }
    return [
      tool('WindowLevel', 'tool-window-level', 'Window Level'),
      tool('Pan', 'tool-move', 'Pan'),
      tool('Zoom', 'tool-zoom', 'Zoom'),
      {
        id: 'Reset',
        uiType: 'ohif.radioGroup',
        props: { icon: 'tool-reset', label: 'Reset View', commands: 'resetViewport', evaluate: 'evaluate.action' },
      },
    ];
  }

  function createToolGroup(extensionManager, toolGroupService) {
    var exports = extensionManager.getModuleEntry(IDS.tools).exports;
    var names = exports.toolNames;
    var buttons = exports.Enums.MouseBindings;
    toolGroupService.createToolGroupAndAddTools(TOOL_GROUP, {
      active: [
        { toolName: names.WindowLevel, bindings: [{ mouseButton: buttons.Primary }] },
        { toolName: names.Pan, bindings: [{ mouseButton: buttons.Auxiliary }] },
        { toolName: names.Zoom, bindings: [{ mouseButton: buttons.Secondary }] },
        { toolName: names.StackScroll, bindings: [{ mouseButton: buttons.Wheel }] },
      ],
    });
  }

  // The MONAI Label panel defaults to port 8000 of the page's host; this server may be elsewhere.
  function pointPanelAtThisServer() {
    if (document.cookie.match('(^|;) ?' + SERVER_COOKIE + '=([^;]+)')) {
      return;
    }
    document.cookie = SERVER_COOKIE + '=' + escape(window.location.origin + '/') + '; path=/';
  }

  /*
   * A stand-in for a labelmap volume over the labelmap images of a stack segmentation:
   * voxelManager.get/setCompleteScalarDataArray see the images one after the other, which is
   * the order of the volume the panel expects (x fastest, then y, then image).
   */
  function stackLabelmap(cache, segmentationService, segmentationId) {
    var segmentation = segmentationService.getSegmentation(segmentationId);
    var labelmap = segmentation && segmentation.representationData && segmentation.representationData.Labelmap;
    if (!labelmap || !labelmap.imageIds || !labelmap.imageIds.length) {
      return null;
    }
    var images = labelmap.imageIds.map(function (imageId) {
      return cache.getImage(imageId);
    });
    if (images.some(function (image) { return !image; })) {
      return null;
    }
    function pixels(image) {
      return image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
    }
    return {
      isStackLabelmap: true,
      imageIds: labelmap.imageIds.slice(),
      voxelManager: {
        getCompleteScalarDataArray: function () {
          var total = images.reduce(function (n, image) { return n + pixels(image).length; }, 0);
          var out = new Uint8Array(total);
          var offset = 0;
          images.forEach(function (image) {
            out.set(pixels(image), offset);
            offset += pixels(image).length;
          });
          return out;
        },
        setCompleteScalarDataArray: function (data) {
          var offset = 0;
          images.forEach(function (image) {
            var target = pixels(image);
            if (offset + target.length > data.length) {
              throw new Error(
                'AFLoc: the label has ' + data.length + ' voxels but the image stack needs more; ' +
                'is the label on the image grid?'
              );
            }
            target.set(data.subarray(offset, offset + target.length));
            if (image.voxelManager && image.voxelManager.setScalarData) {
              image.voxelManager.setScalarData(target);
            }
            offset += target.length;
          });
          if (offset !== data.length) {
            console.warn('AFLoc: label has ' + data.length + ' voxels, the image stack ' + offset);
          }
        },
      },
    };
  }

  function installStackLabelmapSupport(extensionManager, segmentationService) {
    if (segmentationService.__aflocStackLabelmaps) {
      return;
    }
    var cornerstone = extensionManager.getModuleEntry(IDS.common).exports.getCornerstoneLibraries().cornerstone;
    var original = segmentationService.getLabelmapVolume.bind(segmentationService);
    segmentationService.getLabelmapVolume = function (segmentationId) {
      var volume = original(segmentationId);
      return volume || stackLabelmap(cornerstone.cache, segmentationService, segmentationId);
    };
    segmentationService.__aflocStackLabelmaps = true;
  }

  /*
   * Test hook: what the labelmap of a segmentation (default '1') holds: its voxel count, the
   * non-zero ones, and the FNV-1a hash of its bytes (to compare with the label file sent).
   */
  function exposeTestHook(servicesManager) {
    window.__aflocOhif = {
      modeId: MODE_ID,
      labelmapStats: function (segmentationId) {
        var labelmap = null;
        try {
          labelmap = servicesManager.services.segmentationService.getLabelmapVolume(segmentationId || '1');
        } catch (error) {
          return null; // no such segmentation yet
        }
        if (!labelmap) {
          return null;
        }
        var data = labelmap.voxelManager.getCompleteScalarDataArray();
        var nonZero = 0;
        var hash = 0x811c9dc5;
        for (var i = 0; i < data.length; i++) {
          if (data[i]) {
            nonZero++;
          }
          hash = Math.imul(hash ^ (data[i] & 0xff), 0x01000193) >>> 0;
        }
        return { total: data.length, nonZero: nonZero, fnv1a: hash };
      },
    };
  }

  function modeFactory() {
    return {
      id: MODE_ID,
      routeName: 'afloc',
      displayName: 'AFLoc (X-ray)',
      onModeEnter: function (context) {
        var services = context.servicesManager.services;
        services.measurementService.clearMeasurements();
        createToolGroup(context.extensionManager, services.toolGroupService);
        services.toolbarService.addButtons(toolbarButtons());
        services.toolbarService.createButtonSection('primary', ['WindowLevel', 'Pan', 'Zoom', 'Reset']);
        pointPanelAtThisServer();
        installStackLabelmapSupport(context.extensionManager, services.segmentationService);
        exposeTestHook(context.servicesManager);
        if (window.__aflocPanel) {
          window.__aflocPanel.enter(context.servicesManager, context.extensionManager);
        }
      },
      onModeExit: function (context) {
        var services = context.servicesManager.services;
        if (window.__aflocPanel) {
          window.__aflocPanel.exit();
        }
        services.uiDialogService.dismissAll();
        services.uiModalService.hide();
        services.toolGroupService.destroy();
        services.syncGroupService.destroy();
        services.segmentationService.destroy();
        services.cornerstoneViewportService.destroy();
      },
      validationTags: { study: [], series: [] },
      isValidMode: function (study) {
        var modalities = String(study.modalities || '').split('\\');
        var valid = modalities.some(function (m) { return MODALITIES.indexOf(m) !== -1; });
        return { valid: valid, description: 'AFLoc localizes findings on projection radiographs (CR, DX)' };
      },
      routes: [
        {
          path: 'afloc',
          layoutTemplate: function () {
            return {
              id: IDS.layout,
              props: {
                leftPanels: [IDS.seriesList],
                rightPanels: [IDS.aflocPanel, IDS.monaiPanel],
                rightPanelDefaultClosed: false,
                viewports: [
                  { namespace: IDS.viewport, displaySetsToDisplay: [IDS.stack] },
                  { namespace: IDS.segViewport, displaySetsToDisplay: [IDS.segSopClass] },
                ],
              },
            };
          },
        },
      ],
      extensions: {
        '@ohif/extension-default': '^3.0.0',
        '@ohif/extension-cornerstone': '^3.0.0',
        '@ohif/extension-cornerstone-dicom-seg': '^3.0.0',
        '@ohif/extension-monai-label': '^3.0.0',
        // Not 'afloc-label': the viewer would try to import it by name. It is registered at
        // start from window.config.extensions (lib/ohif/afloc_panel.js).
      },
      hangingProtocol: 'default',
      sopClassHandlers: [IDS.stack, IDS.segSopClass],
      hotkeys: [],
    };
  }

  window.config = window.config || {};
  window.config.modes = [{ id: MODE_ID, modeFactory: modeFactory }].concat(window.config.modes || []);
})();
